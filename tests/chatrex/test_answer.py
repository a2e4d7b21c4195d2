from chatrex import parse_answer

BOXES = [[0, 0, 10, 10], [10, 10, 20, 20], [20, 20, 30, 30], [30, 30, 40, 40]]


def test_single_group():
    out = parse_answer("<ground>red car</ground><objects><obj2></objects>", BOXES)
    assert out.text == "red car"
    assert len(out.spans) == 1
    span = out.spans[0]
    assert (span.phrase, span.start, span.end, span.indices) == ("red car", 0, 7, [2])
    assert span.boxes == [[20, 20, 30, 30]]
    assert out.num_invalid_indices == 0


def test_groups_in_free_text_offsets():
    text = "I see <ground>two cars</ground><objects><obj0><obj3></objects> and <ground>a tree</ground><objects><obj1></objects>."
    out = parse_answer(text, BOXES)
    assert out.text == "I see two cars and a tree."
    assert [s.phrase for s in out.spans] == ["two cars", "a tree"]
    for s in out.spans:
        assert out.text[s.start : s.end] == s.phrase
    assert out.spans[0].indices == [0, 3]
    assert out.indices == [0, 3, 1]
    assert out.boxes == [BOXES[0], BOXES[3], BOXES[1]]


def test_out_of_range_indices_dropped_and_counted():
    out = parse_answer("<ground>cat</ground><objects><obj1><obj7><obj99></objects>", BOXES)
    assert out.spans[0].indices == [1]
    assert out.num_invalid_indices == 2


def test_duplicate_indices_kept_once():
    out = parse_answer("<ground>cat</ground><objects><obj1><obj1></objects>", BOXES)
    assert out.spans[0].indices == [1]
    assert out.num_invalid_indices == 0


def test_malformed_markup_never_raises():
    cases = [
        "<ground>unclosed <objects><obj1></objects>",
        "<ground>a</ground> no objects list",
        "</ground></objects><objects>",
        "<ground><ground>nested</ground><objects><obj0></objects>",
        "<objects><obj1></objects> stray list",
        "<ground>x</ground><objects>junk<obj0></objects>",
        "",
        None,
        "<obj" * 50,
    ]
    for text in cases:
        out = parse_answer(text, BOXES)
        assert "<ground>" not in out.text and "</objects>" not in out.text
    nested = parse_answer("<ground><ground>nested</ground><objects><obj0></objects>", BOXES)
    assert [s.phrase for s in nested.spans] == ["nested"] and nested.text == "nested"
    junk = parse_answer("<ground>x</ground><objects>junk<obj0></objects>", BOXES)
    assert junk.spans[0].indices == [0] and junk.num_invalid_indices == 1
    stray = parse_answer("<objects><obj1></objects> stray list", BOXES)
    assert stray.spans == [] and stray.text == " stray list"


def test_no_boxes_means_every_index_invalid():
    out = parse_answer("<ground>dog</ground><objects><obj0></objects>", None)
    assert out.spans[0].indices == [] and out.num_invalid_indices == 1


def test_negative_answer_without_groups():
    out = parse_answer("There is no such object.", BOXES)
    assert out.text == "There is no such object." and out.spans == [] and out.boxes == []


def test_huge_or_non_ascii_indices_never_raise():
    out = parse_answer("<ground>a</ground><objects><obj" + "1" * 5000 + "></objects>", BOXES)
    assert out.spans[0].indices == [] and out.num_invalid_indices == 1
    arabic = parse_answer("<ground>a</ground><objects><obj\u0663></objects>", BOXES)
    assert arabic.spans[0].indices == []

import pytest

from chatrex import Answer, parse_answer
from chatrex.text.markup import (
    MARKUP,
    MODEL_MARKUP,
    OBJECTS,
    SPAN,
    format_object,
    format_objects,
    format_span,
    object_indices,
    renumber_objects,
    rewrite_object_lists,
)
from chatrex.text.special_tokens import OBJECT_TOKENS, SPECIAL_TOKENS, object_token

BOXES = [[i, i, i + 1, i + 1] for i in range(10)]


def test_builders_spell_the_grammar():
    assert format_object(3) == "<obj3>"
    assert format_objects([7, 3]) == "<objects><obj7><obj3></objects>"
    assert format_objects([]) == "<objects></objects>"
    assert format_span("two red cars", [3, 7]) == "<ground>two red cars</ground><objects><obj3><obj7></objects>"


def test_object_beyond_the_vocabulary_is_still_markup():
    # Records may name more regions than the model has object tokens.
    assert format_object(250) == "<obj250>"
    with pytest.raises(ValueError, match="-1"):
        format_object(-1)
    with pytest.raises(ValueError, match="100"):
        object_token(100)


def test_vocabulary_is_spelled_by_the_grammar():
    assert OBJECT_TOKENS[42] == format_object(42) == object_token(42)
    assert SPECIAL_TOKENS[-5:-1] == ["<ground>", "</ground>", "<objects>", "</objects>"]


def test_span_regex_round_trips_the_builder():
    text = "A " + format_span("cat", [0, 12]) + " and\n" + format_span("two\ndogs", []) + "."
    assert SPAN.findall(text) == [("cat", "<obj0><obj12>"), ("two\ndogs", "")]
    assert [object_indices(body) for _, body in SPAN.findall(text)] == [[0, 12], []]


def test_span_allows_whitespace_before_the_list_only():
    assert SPAN.findall("<ground>cat</ground> \n<objects><obj1></objects>") == [("cat", "<obj1>")]
    assert SPAN.findall("<ground>cat</ground>x<objects><obj1></objects>") == []
    assert SPAN.findall("<ground>cat</ground><objects>(1,2),(3,4)</objects>") == []


def test_builder_output_parses_back():
    text = "I see " + format_span("two cars", [0, 3]) + " near " + format_span("a tree", [1]) + "."
    out = parse_answer(text, BOXES)
    assert out.text == "I see two cars near a tree."
    assert [(s.phrase, s.indices) for s in out.spans] == [("two cars", [0, 3]), ("a tree", [1])]
    assert isinstance(out, Answer) and out.raw == text and out.history_turns == 0


def test_object_indices_keep_order_and_repeats():
    assert object_indices("<obj4> then <obj1><obj4>, <objfeat> <obj>") == [4, 1, 4]


def test_renumber_objects_maps_and_keeps_unmapped_tokens_as_written():
    mapping = {0: 5, 2: 0}
    text = "<obj0> <obj2> <obj07> <obj9>"
    assert renumber_objects(text, mapping.get) == "<obj5> <obj0> <obj07> <obj9>"


def test_renumber_objects_lets_the_mapping_refuse():
    def refuse(n):
        raise KeyError(n)

    with pytest.raises(KeyError):
        renumber_objects("<obj1>", refuse)
    assert renumber_objects("no markup", refuse) == "no markup"


def test_rewrite_object_lists_touches_lists_not_bare_tokens():
    text = "<obj2> is " + format_span("it", [3, 1])
    out = rewrite_object_lists(text, lambda idx: format_objects(sorted(idx)))
    assert out == "<obj2> is <ground>it</ground><objects><obj1><obj3></objects>"
    assert OBJECTS.sub("", out) == "<obj2> is <ground>it</ground>"


def test_markup_strips_every_tag_and_token():
    text = format_span("cat", [1, 123]) + " <obj4567>"
    assert MARKUP.sub("", text) == "cat "
    # Model output: an index of more than 3 digits is not a token, so it stays as text.
    assert MODEL_MARKUP.sub("", text) == "cat <obj4567>"


def test_tolerant_parse_of_broken_markup():
    out = parse_answer("<ground>a <ground>cat</ground><objects><obj1><obj1234>junk</objects> <obj2> </ground>", BOXES)
    assert [(s.phrase, s.indices) for s in out.spans] == [("cat", [1])]
    assert out.text == "a cat  "
    assert out.num_invalid_indices == 1  # the unparsable rest of the list counts once

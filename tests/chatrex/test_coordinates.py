"""Coordinate answers (the baseline format): hand-computed quantisation and parsing."""

from chatrex.text.coordinates import dequantize, parse_coordinate_answer, quantize, to_coordinate_conversation


def test_quantize_and_dequantize_hand_cases():
    assert quantize([0, 0, 200, 100], 200, 100) == "(0,0),(999,999)"
    assert quantize([50, 25, 100, 75], 200, 100) == "(250,250),(500,750)"
    assert dequantize((250, 250, 500, 750), 200, 100) == [50.1, 25.05, 100.1, 75.05]


def test_conversation_rewrite():
    boxes = [[0, 0, 20, 10], [100, 50, 200, 100]]
    conv = [{"role": "user", "content": "What is <obj1>?"},
            {"role": "assistant", "content": "<ground>two cars</ground><objects><obj0><obj1></objects> and <ground>a dog</ground><objects></objects>"}]
    out = to_coordinate_conversation(conv, boxes, 200, 100)
    assert out[0]["content"] == "What is the region (500,500),(999,999)?"
    assert out[1]["content"] == "<ground>two cars</ground><objects>(0,0),(100,100)(500,500),(999,999)</objects> and <ground>a dog</ground><objects></objects>"


def test_parse_skips_malformed_boxes_and_keeps_negatives():
    text = "<ground>car</ground><objects>(10,10),(20,20)(5,5),(1,1)(3,x)</objects><ground>dog</ground><objects></objects>"
    spans = parse_coordinate_answer(text, 1000, 1000)
    assert spans == [("car", [[10.5, 10.5, 20.5, 20.5]]), ("dog", [])]

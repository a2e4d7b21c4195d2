"""ChatRexPredictor.ask_stream, which the demo's chat bubbles show, on the bundled model and the
example images: the streamed answer ends exactly as ask() answers."""

import pytest
from PIL import Image

from chatrex import ChatRexPredictor
from demo.app import example_images


@pytest.fixture(scope="module")
def bundled():
    return ChatRexPredictor.from_pretrained("chatrex-tiny")


@pytest.mark.parametrize("image", example_images(), ids=lambda p: p.rsplit("/", 1)[-1])
@pytest.mark.slow
def test_stream_ends_with_the_answer_of_ask(bundled, image):
    bundled.set_image(Image.open(image))
    first = bundled.ask("Find the boat.")
    for question, history in (("Find the boat.", None), ("What colour is it?", [("Find the boat.", first)])):
        streamed = list(bundled.ask_stream(question, history=history))
        assert streamed[-1] == bundled.ask(question, history=history)
        assert len(streamed) > 2  # it arrived token by token, not at once
        assert all(streamed[-1].raw.startswith(part.raw) for part in streamed)
    assert streamed[-1].history_turns == 1


def test_closing_the_stream_stops_generation(bundled):
    bundled.set_image(Image.open(example_images()[0]))
    steps = []
    hook = bundled.model.register_forward_hook(lambda *args: steps.append(1))
    try:
        full = len(list(bundled.ask_stream("Describe the image.")))
        steps.clear()
        stream = bundled.ask_stream("Describe the image.")
        next(stream)
        stream.close()
    finally:
        hook.remove()
    assert full > 8 and len(steps) <= 3  # the step under way when it was closed, at most one more


def test_errors_are_raised_by_the_first_next(bundled):
    bundled.set_image(Image.open(example_images()[0]))
    with pytest.raises(ValueError, match="history"):
        next(bundled.ask_stream("What colour is it?", history=[("only a question",)]))
    with pytest.raises(ValueError, match="empty"):
        next(bundled.ask_stream("  "))

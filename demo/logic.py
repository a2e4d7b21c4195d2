"""What the demo does, as plain functions (no Gradio imports), so tests can call them directly.

Every function takes the shared :class:`~chatrex.predictor.ChatRexPredictor` and returns data
for the UI: an annotated image and the answer as coloured spans (:func:`reply_html` renders
them for a chat bubble). Bad input returns a friendly message instead of raising.
"""

from __future__ import annotations

import contextlib
import functools
import html
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from chatrex.image_processing_chatrex import load_image
from chatrex.predictor import InputTooLongError
from chatrex.text import prompts
from chatrex.text.markup import format_object
from chatrex.visualize import PALETTE, draw_boxes, text_color_for
from upn.image_processing import to_rgb_image

MAX_SIDE = 2048
# PIL's decompression-bomb limit (its default where an application switched it off): larger
# images are refused before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
NO_IMAGE = "Please upload an image first (or pick an example)."
NOT_AN_IMAGE = "That file is not an image I can read. Please upload a PNG, JPEG, WebP or BMP image."
EMPTY_FILE = "That file is empty (0 bytes). Please upload a PNG, JPEG, WebP or BMP image."


def hex_color(i: int) -> str:
    r, g, b = PALETTE[i % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass
class Reply:
    """One answer for the UI.

    text: the answer as plain text; spans: ``[(text, label or None)]`` covering ``text``, where
    a label names a grounded phrase; color_map: label -> hex colour, the colour of its boxes in
    ``image``; image: annotated image or None; notice: a warning shown beside the image (e.g. the
    image was downscaled); turn: ``(prompt, raw answer)`` as the model saw them, for the
    history of later questions, or None when the model was not asked; history_turns: how many
    earlier turns the model saw.
    """

    text: str
    spans: list
    color_map: dict
    image: Image.Image | None
    notice: str = ""
    turn: tuple[str, str] | None = None
    history_turns: int = 0


def message(text: str, image: Image.Image | None = None, notice: str = "") -> Reply:
    """A reply that is only a message (no model answer)."""
    return Reply(text, [(text, None)], {}, image, notice)


def reply_html(reply: Reply) -> str:
    """The reply as chat-bubble HTML: each grounded phrase on the colour of its boxes, all text
    escaped (the answer may repeat the user's words)."""
    out = []
    for text, label in reply.spans:
        piece = html.escape(text).replace("\n", "<br>")
        if label is not None and label in reply.color_map:
            color = reply.color_map[label]
            ink = "#%02x%02x%02x" % text_color_for(tuple(int(color[i:i + 2], 16) for i in (1, 3, 5)))
            piece = (f'<span class="grounded" title="{html.escape(label)}" '
                     f'style="background:{color};color:{ink};border-radius:4px;padding:0 3px">{piece}</span>')
        out.append(piece)
    return "".join(out)


def _too_large(size: tuple[int, int] | None = None) -> str:
    dims = f" ({size[0]}x{size[1]} pixels)" if size else ""
    return (f"That image is too large{dims}: this demo reads images up to {MAX_PIXELS / 1e6:.0f} megapixels. "
            f"Please downscale it (the demo works at {MAX_SIDE} pixels on the longer side anyway).")


def _file_problem(path: str) -> str:
    """Why ``path`` cannot be used as an image ("" when it can), judged from its size and
    header before any pixels are decoded."""
    if not os.path.isfile(path):
        return "That upload did not arrive. Please try again."
    if os.path.getsize(path) == 0:
        return EMPTY_FILE
    try:
        with Image.open(path) as img:
            size = img.size
    except Image.DecompressionBombError:  # over twice PIL's limit: refused before the size is known
        return _too_large()
    except (UnidentifiedImageError, OSError, ValueError):
        return NOT_AN_IMAGE
    # Between PIL's limit and twice it PIL only warns, but decoding would still take gigabytes.
    return _too_large(size) if size[0] * size[1] > MAX_PIXELS else ""


def _downscaled(rgb: Image.Image) -> tuple[Image.Image, str]:
    if max(rgb.size) <= MAX_SIDE:
        return rgb, ""
    w, h = rgb.size
    scale = MAX_SIDE / max(w, h)
    small = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return small, f"The image was {w}x{h}; it was downscaled to {small.width}x{small.height}."


def prepare_image(image) -> tuple[Image.Image | None, str]:
    """RGB image, downscaled so its longer side is at most MAX_SIDE, plus a notice; or
    ``(None, message)`` when it is not a usable image. ``image``: a file path, PIL image or
    array."""
    if image is None:
        return None, NO_IMAGE
    if isinstance(image, (str, os.PathLike)):
        problem = _file_problem(os.fspath(image))
        if problem:
            return None, problem
        try:
            rgb = load_image(image)
        except (ValueError, OSError):  # e.g. a truncated file: the header was fine
            return None, NOT_AN_IMAGE
    else:
        rgb = to_rgb_image(image)
    return _downscaled(rgb)


def _failure_message(err: Exception) -> str:
    if isinstance(err, InputTooLongError):
        return (f"That message is too long for this model: with the image it comes to {err.num_tokens} tokens, "
                f"and the model reads at most {err.limit}. Please shorten it.")
    return f"Sorry, that did not work: {err}"


# Model-side failures (e.g. a model folder without a proposal network, a malformed history)
# become a message in the chat instead of an error page.
FRIENDLY_ERRORS = (ValueError, RuntimeError, OSError)


def _friendly(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FRIENDLY_ERRORS as err:
            if method.__name__ == "proposals":
                return None, _failure_message(err)
            return message(_failure_message(err))

    return wrapper


def _friendly_stream(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            yield from method(self, *args, **kwargs)
        except FRIENDLY_ERRORS as err:
            yield message(_failure_message(err))

    return wrapper


def _grounded(text: str, answer_spans) -> tuple[list, dict]:
    """``(spans, color_map)`` for :class:`Reply`: phrase i is labelled ``"phrase [i+1]"`` and
    coloured with palette colour i, the colour its boxes are drawn in."""
    pieces, color_map, cursor = [], {}, 0
    for i, span in enumerate(answer_spans):
        if span.start > cursor:
            pieces.append((text[cursor:span.start], None))
        label = f"{span.phrase} [{i + 1}]"
        pieces.append((text[span.start:span.end], label))
        color_map[label] = hex_color(i)
        cursor = span.end
    if cursor < len(text):
        pieces.append((text[cursor:], None))
    return pieces, color_map


def _draw_answer(image: Image.Image, answer_spans) -> Image.Image:
    boxes, labels, colors = [], [], []
    for i, span in enumerate(answer_spans):
        boxes += span.boxes
        labels += [span.phrase] * len(span.boxes)
        colors += [PALETTE[i % len(PALETTE)]] * len(span.boxes)
    return draw_boxes(image, boxes, labels, colors)


class DemoLogic:
    """Serialises access to one predictor (it holds the current image's cache).

    ``history`` arguments are the conversation so far about the same image, oldest first, as
    ``[prompt, raw answer]`` pairs: the :attr:`Reply.turn` of earlier replies.
    """

    def __init__(self, predictor):
        self.predictor = predictor
        self._lock = threading.Lock()

    @staticmethod
    def _checked(image, text: str, missing: str) -> Reply | tuple[Image.Image, str, str]:
        """``(image, notice, stripped text)``, or the message to show instead."""
        rgb, notice = prepare_image(image)
        if rgb is None:
            return message(notice)
        if not text or not text.strip():
            return message(missing, rgb, notice)
        return rgb, notice, text.strip()

    def _answer_reply(self, image, question: str, answer, notice: str) -> Reply:
        spans, color_map = _grounded(answer.text, answer.spans) if answer.text else ([("(no answer)", None)], {})
        annotated = _draw_answer(image, answer.spans)
        return Reply(answer.text or "(no answer)", spans, color_map, annotated, notice, (question, answer.raw), answer.history_turns)

    @_friendly
    def ask(self, image, question: str, history=None) -> Reply:
        """Free-form question; grounded phrases are coloured and their boxes drawn."""
        checked = self._checked(image, question, "Please type a question.")
        if isinstance(checked, Reply):
            return checked
        rgb, notice, question = checked
        with self._lock:
            self.predictor.set_image(rgb)
            answer = self.predictor.ask(question, history=history)
        return self._answer_reply(rgb, question, answer, notice)

    @_friendly_stream
    def ask_stream(self, image, question: str, history=None) -> Iterator[Reply]:
        """:meth:`ask` as the answer is generated: partial replies (no image, no turn), then the
        same reply :meth:`ask` returns."""
        checked = self._checked(image, question, "Please type a question.")
        if isinstance(checked, Reply):
            yield checked
            return
        rgb, notice, question = checked
        with self._lock:
            self.predictor.set_image(rgb)
            # Closed before the lock is released, so an abandoned stream's generation has
            # stopped before the next request uses the model.
            with contextlib.closing(self.predictor.ask_stream(question, history=history)) as answers:
                # One answer behind, so the last (complete) one is yielded once, with its image.
                answer = next(answers)
                for following in answers:
                    spans, color_map = _grounded(answer.text, answer.spans)
                    yield Reply(answer.text, spans, color_map, None, notice)
                    answer = following
        yield self._answer_reply(rgb, question, answer, notice)

    @_friendly
    def detect(self, image, phrase: str) -> Reply:
        """Boxes for a phrase, shown as one grounded span."""
        checked = self._checked(image, phrase, "Please type what to find.")
        if isinstance(checked, Reply):
            return checked
        rgb, notice, phrase = checked
        with self._lock:
            self.predictor.set_image(rgb)
            det = self.predictor.detect(phrase)
        turn = (det.prompt, det.answer)
        if not det.boxes:
            return Reply(f"I found no {phrase}.", [(f"I found no {phrase}.", None)], {}, rgb, notice, turn)
        label = f"{phrase} [1]"
        spans = [(f"Found {len(det.boxes)}: ", None), (phrase, label)]
        drawn = draw_boxes(rgb, det.boxes, [phrase] * len(det.boxes), [PALETTE[0]] * len(det.boxes))
        return Reply(f"Found {len(det.boxes)}: {phrase}", spans, {label: hex_color(0)}, drawn, notice, turn)

    @_friendly
    def describe(self, image, index, level: str = "description") -> Reply:
        if level not in prompts.REGION:
            return message(f"Describe as one of {', '.join(prompts.REGION)}.")
        rgb, notice = prepare_image(image)
        if rgb is None:
            return message(notice)
        with self._lock:
            n = self.predictor.set_image(rgb)
            try:
                index = int(index)
                text = self.predictor.describe(index, level=level) or "(no answer)"
            except (TypeError, ValueError):
                hint = f"Pick a box index between 0 and {n - 1} (see the Proposals tab)." if n else "No boxes were proposed for this image."
                return message(hint, rgb, notice)
            box = self.predictor.boxes[index].tolist()
        label = f"box {index}"
        turn = (self.predictor.prompts.region[level].format(obj=format_object(index)), text)  # describe()'s own prompt
        return Reply(text, [(text, label)], {label: hex_color(0)}, draw_boxes(rgb, [box], [label], [PALETTE[0]]), notice, turn)

    def grounded_caption(self, image, history=None) -> Reply:
        return self.ask(image, self.predictor.prompts.grounded_caption, history)  # the wording the model was trained with

    def grounded_caption_stream(self, image, history=None) -> Iterator[Reply]:
        return self.ask_stream(image, self.predictor.prompts.grounded_caption, history)

    @_friendly
    def proposals(self, image, granularity: str = "both", min_score: float | None = None) -> tuple[Image.Image | None, str]:
        """UPN proposals drawn on the image (coarse orange, fine blue) and a one-line summary."""
        rgb, notice = prepare_image(image)
        if rgb is None:
            return None, notice
        if granularity not in ("both", "coarse", "fine"):
            return None, f"Granularity must be both, coarse or fine, not {granularity!r}."
        if self.predictor.upn is None:
            return rgb, "This model has no proposal network."
        # The chat's settings, so that at "both" the numbers drawn are the chat's box indices.
        min_score = self.predictor.proposal_min_score if min_score is None else float(min_score)
        with self._lock:
            props = self.predictor.propose(rgb, prompt_type=granularity, min_score=min_score)
        colors = [(230, 159, 0) if g == "coarse" else (86, 180, 233) for g in props.granularity]
        labels = [str(i) for i in range(len(props))]
        counts = {g: props.granularity.count(g) for g in ("coarse", "fine")}
        summary = f"{len(props)} proposals ({counts['coarse']} coarse, {counts['fine']} fine) with score >= {float(min_score):.2f}"
        return draw_boxes(rgb, props.boxes.tolist(), labels, colors), (notice + " " + summary).strip()

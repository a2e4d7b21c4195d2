"""What the demo does, as plain functions (no Gradio imports), so tests can call them directly.

Every function takes the shared :class:`~chatrex.predictor.ChatRexPredictor` and returns data
for the UI: an annotated image and the answer as highlighted spans. Bad input returns a
friendly message instead of raising.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from PIL import Image

from chatrex import templates
from chatrex.image_processing import load_image, to_rgb_image
from chatrex.predictor import InputTooLongError
from chatrex.visualize import PALETTE, draw_boxes

MAX_SIDE = 2048


def hex_color(i: int) -> str:
    r, g, b = PALETTE[i % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass
class Reply:
    """One answer for the UI.

    text: the message shown in the chat; spans: ``[(text, label or None)]`` for
    HighlightedText; color_map: label -> hex colour; image: annotated image or None;
    notice: a warning shown above the chat (e.g. the image was downscaled).
    """

    text: str
    spans: list
    color_map: dict
    image: Image.Image | None
    notice: str = ""


def prepare_image(image) -> tuple[Image.Image | None, str]:
    """RGB image, downscaled so its longer side is at most MAX_SIDE, plus a notice; or
    ``(None, message)`` when it is not a usable image."""
    if image is None:
        return None, "Please upload an image first (or pick an example)."
    try:
        rgb = load_image(image) if isinstance(image, str) else to_rgb_image(image)
    except (ValueError, OSError) as err:
        return None, f"That file is not an image I can read ({err})."
    notice = ""
    if max(rgb.size) > MAX_SIDE:
        w, h = rgb.size
        scale = MAX_SIDE / max(w, h)
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        notice = f"The image was {w}x{h}; it was downscaled to {rgb.width}x{rgb.height}."
    return rgb, notice


def _friendly(method):
    """Model-side failures (e.g. a model folder without a proposal network) become a message in
    the chat instead of an error page."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, RuntimeError, OSError) as err:
            if isinstance(err, InputTooLongError):
                message = (f"That message is too long for this model: with the image it comes to {err.num_tokens} tokens, "
                           f"and the model reads at most {err.limit}. Please shorten it.")
            else:
                message = f"Sorry, that did not work: {err}"
            if method.__name__ == "proposals":
                return None, message
            return Reply(message, [(message, None)], {}, None)

    return wrapper


class DemoLogic:
    """Serialises access to one predictor (it holds the current image's cache)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self._lock = threading.Lock()

    def _reply_from_answer(self, image, text: str, spans, notice: str) -> Reply:
        pieces, color_map, boxes, labels, colors = [], {}, [], [], []
        cursor = 0
        for i, span in enumerate(spans):
            if span.start > cursor:
                pieces.append((text[cursor:span.start], None))
            label = f"{span.phrase} [{i + 1}]"
            pieces.append((text[span.start:span.end], label))
            color_map[label] = hex_color(i)
            cursor = span.end
            for b in span.boxes:
                boxes.append(b)
                labels.append(span.phrase)
                colors.append(PALETTE[i % len(PALETTE)])
        if cursor < len(text):
            pieces.append((text[cursor:], None))
        annotated = draw_boxes(image, boxes, labels, colors)
        return Reply(text or "(no answer)", pieces, color_map, annotated, notice)

    @_friendly
    def ask(self, image, question: str) -> Reply:
        """Free-form question; grounded phrases are coloured and their boxes drawn."""
        rgb, notice = prepare_image(image)
        if rgb is None:
            return Reply(notice, [(notice, None)], {}, None)
        if not question or not question.strip():
            return Reply("Please type a question.", [("Please type a question.", None)], {}, rgb, notice)
        with self._lock:
            self.predictor.set_image(rgb)
            answer = self.predictor.ask(question.strip())
        return self._reply_from_answer(rgb, answer.text, answer.spans, notice)

    @_friendly
    def detect(self, image, phrase: str) -> Reply:
        """Boxes for a phrase, shown as one grounded span."""
        rgb, notice = prepare_image(image)
        if rgb is None:
            return Reply(notice, [(notice, None)], {}, None)
        if not phrase or not phrase.strip():
            return Reply("Please type what to find.", [("Please type what to find.", None)], {}, rgb, notice)
        with self._lock:
            self.predictor.set_image(rgb)
            det = self.predictor.detect(phrase.strip())
        if not det.boxes:
            text = f"I found no {phrase.strip()}."
            return Reply(text, [(text, None)], {}, rgb, notice)
        text = f"Found {len(det.boxes)}: {phrase.strip()}"
        label = f"{phrase.strip()} [1]"
        return Reply(text, [(text, label)], {label: hex_color(0)}, draw_boxes(rgb, det.boxes, [phrase.strip()] * len(det.boxes), [PALETTE[0]] * len(det.boxes)), notice)

    @_friendly
    def describe(self, image, index, level: str = "description") -> Reply:
        if level not in templates.REGION:
            msg = f"Describe as one of {', '.join(templates.REGION)}."
            return Reply(msg, [(msg, None)], {}, None)
        rgb, notice = prepare_image(image)
        if rgb is None:
            return Reply(notice, [(notice, None)], {}, None)
        with self._lock:
            n = self.predictor.set_image(rgb)
            try:
                index = int(index)
                text = self.predictor.describe(index, level=level)
            except (TypeError, ValueError):
                msg = f"Pick a box index between 0 and {n - 1} (see the Proposals tab)." if n else "No boxes were proposed for this image."
                return Reply(msg, [(msg, None)], {}, rgb, notice)
            box = self.predictor.boxes[index].tolist()
        label = f"box {index}"
        return Reply(text or "(no answer)", [(text or "(no answer)", label)], {label: hex_color(0)}, draw_boxes(rgb, [box], [label], [PALETTE[0]]), notice)

    def grounded_caption(self, image) -> Reply:
        return self.ask(image, self.predictor.prompts.grounded_caption)  # the wording the model was trained with

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

"""What :class:`chatrex.predictor.ChatRexPredictor` returns besides answers (which are
:class:`chatrex.text.answer.Answer`): detections (pixel xyxy boxes of the original image), and
the history of earlier turns it accepts."""

from __future__ import annotations

from dataclasses import dataclass

from .text.answer import Answer


def history_messages(history) -> list[tuple[dict, dict]]:
    """``[(user message, assistant message), ...]`` from ``(question, answer)`` pairs."""
    turns = []
    for i, pair in enumerate(history or []):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"history[{i}] must be a (question, answer) pair, got {pair!r}")
        question, answer = pair
        answer = answer.raw if isinstance(answer, Answer) else answer
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError(f"history[{i}]: question and answer must be strings (or an Answer), got {pair!r}")
        turns.append(({"role": "user", "content": question}, {"role": "assistant", "content": answer}))
    return turns


@dataclass
class Detection:
    """Boxes (pixel xyxy, original image) the model retrieved for ``phrase``, with their
    proposal indices and proposal scores; ``answer`` is the raw answer and ``prompt`` the
    question the model was asked (together, a turn for :meth:`ChatRexPredictor.ask`'s history)."""

    phrase: str
    boxes: list[list[float]]
    indices: list[int]
    scores: list[float]
    answer: str
    prompt: str = ""

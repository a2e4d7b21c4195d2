"""Token streaming for ``ChatRexPredictor.ask_stream``: generation runs in a thread and hands
each new token to the reader; the reader can stop it early."""

from __future__ import annotations

import queue
import threading

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class TokenQueue(BaseStreamer):
    """Hands each generated token id from the generating thread to the reader; ``None`` marks
    the end. ``generate`` passes the prompt first, which is skipped."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.queue.put(value.reshape(-1).tolist())
        self._prompt_seen = True

    def end(self):
        self.queue.put(None)


class StopWhenSet(StoppingCriteria):
    """Ends generation early once ``event`` is set (the reader of a stream went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

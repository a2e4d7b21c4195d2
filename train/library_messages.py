"""Library messages that training prints although nothing is wrong, silenced where our code
triggers them and nowhere else (docs/training.md, "Expected library messages").

* DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable
  to detect it.": logged when DeepSpeed is imported on a machine without a GPU, and accelerate
  imports it whenever it is installed (``Accelerator.unwrap_model`` does, with or without a
  DeepSpeed config). :func:`name_cpu_accelerator_for_deepspeed`.
* accelerate's "Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but
  check ...": logged by ``Accelerator.save_state`` for a model with tied embeddings (the bundled
  chatrex-tiny). :func:`expected_shared_tensors`.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from contextlib import contextmanager

import torch

# The logger of accelerate.utils.other.clean_state_dict_for_safetensors, which save_state calls.
_ACCELERATE_SAVE_LOGGER = "accelerate.utils.other"


def name_cpu_accelerator_for_deepspeed() -> None:
    """On a machine without a GPU, tell DeepSpeed its accelerator is the CPU (its
    ``DS_ACCELERATOR``), which picks the backend it would detect, without the detection and its
    warning. A value the user set is kept. Call before accelerate first imports DeepSpeed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def tied_parameter_names(model) -> frozenset[str]:
    """Names of the parameters the model shares on purpose, every name of each shared tensor
    (e.g. ``model.language_model.embed_tokens.weight`` and ``lm_head.weight`` under tied
    embeddings)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return frozenset(n for group in names.values() if len(group) > 1 for n in group)


class _ExpectedSharedTensors(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...} while saving" when every tensor it names
    is one the model ties on purpose: safetensors stores a shared tensor once and
    ``from_pretrained`` ties it again, so nothing is lost. Any other name still gets through."""

    _MESSAGE = re.compile(r"Removed shared tensor (\{.*?\}) while saving")

    def __init__(self, expected: frozenset[str]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._MESSAGE.search(record.getMessage())
        if match is None:
            return True
        try:
            names = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return True
        # Under DDP accelerate saves the wrapper's state dict, whose keys start with "module.".
        return not {n.removeprefix("module.") for n in names} <= self.expected


@contextmanager
def expected_shared_tensors(names: frozenset[str]):
    """Within the block, accelerate's warning about shared tensors that are all in ``names`` is
    dropped (see :class:`_ExpectedSharedTensors`)."""
    logger = logging.getLogger(_ACCELERATE_SAVE_LOGGER)
    quiet = _ExpectedSharedTensors(names)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)

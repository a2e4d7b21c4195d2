"""Train a small byte-level BPE tokenizer for tiny LLMs (tests and the bundled model).

The full-size model uses Qwen's tokenizer. Tiny models trained from scratch need a small
vocabulary, so this trains one with the ``tokenizers`` library on in-domain text and wraps it
as a ``PreTrainedTokenizerFast`` with ChatML tokens, a chat template and the ChatRex tokens.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .chat_template import CHATML_TEMPLATE
from .special_tokens import add_special_tokens

CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Returns a tokenizer whose vocabulary is at most ``vocab_size`` + the ChatRex special tokens,
    with ``eos_token='<|im_end|>'``, ``pad_token='<|endoftext|>'`` and a ChatML chat template.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE (needs >= 300)")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=CHATML_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    add_special_tokens(tokenizer)
    return tokenizer

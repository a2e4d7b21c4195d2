"""``python -m train.tokenizer``: train the byte-level BPE tokenizer of a tiny ChatRex on records.

The text comes from every language field of the records (captions, region annotations,
queries, conversations) plus the prompt templates, so the vocabulary covers both questions and
answers. The ChatRex special tokens and ChatML tokens are added on top.

    python -m train.tokenizer --records data/synth/train/records.jsonl --vocab-size 1024 --out runs/tokenizer
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterator

from chatrex.text import prompts
from chatrex.text.markup import MARKUP
from chatrex.text.tokenizer_training import train_bpe_tokenizer
from chatrex.utils.jsonl import JsonlRecords


def record_texts(records: JsonlRecords) -> Iterator[str]:
    for i in range(len(records)):
        rec = records.raw(i)
        for key in ("caption", "grounded_caption"):
            if rec.get(key):
                yield MARKUP.sub(" ", rec[key])
        for region in rec.get("regions") or []:
            for key in ("category", "phrase", "description", "referring"):
                if region.get(key):
                    yield str(region[key])
        for q in rec.get("queries") or []:
            yield str(q.get("text", ""))
        for turn in rec.get("conversations") or []:
            yield MARKUP.sub(" ", str(turn.get("value", "")))


def template_texts() -> Iterator[str]:
    for group in (prompts.DETECTION, prompts.REGION):
        for phrasings in group.values():
            yield from (p.replace("{phrase}", "").replace("{obj}", "") for p in phrasings)
    yield from prompts.GROUNDED_CAPTION + prompts.CAPTION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tokenizer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", action="append", required=True, help="records.jsonl (repeatable)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary before special tokens (default 1024)")
    parser.add_argument("--out", required=True, help="output directory (tokenizer files)")
    args = parser.parse_args(argv)
    try:
        records = JsonlRecords(args.records)
        texts = list(record_texts(records)) + list(template_texts()) * 20
        tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer.save_pretrained(args.out)
    print(f"{args.out}: {len(tokenizer)} tokens from {len(texts)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())

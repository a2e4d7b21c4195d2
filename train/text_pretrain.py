"""``python -m train.text_pretrain``: stage 0b, teach the tiny LLM to copy and to retrieve, from text.

The full-size ChatRex starts from a pretrained Qwen, which already copies phrases and attends
by content. Our 4-layer LLM starts from random weights, and learning both skills only through
image samples proved too slow on a CPU: after 2,400 stage-2 samples it still did not echo the
query phrase. This stage teaches them with text alone, about 20x cheaper per answer:

* the prompt holds the record's regions as object slots, ``<objK><objfeat>``, exactly as in
  the multimodal prompt, but each ``<objfeat>`` is filled with the mean input embedding of the
  region's short phrase ("cyan boat") instead of an image feature;
* the answers are the real tasks: detection / grounding by category, phrase and referring
  expression (incl. negatives), and region category / phrase, several turns per sample.

Stage 1 then trains the object projector to put image features where these text slots were.
Only the LLM (body, embeddings, head) trains here; the encoders are untouched.

Examples::

    python -m train.text_pretrain --init runs/chatrex-tiny/vision/final --records data/synth/train/records.jsonl \\
        --steps 1500 --out runs/chatrex-tiny/text
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.text.markup import format_object
from chatrex.utils.jsonl import JsonlRecords

from .answer_metrics import index_accuracy
from .checkpointing import save_pretrained_atomic
from .tasks import build_detection, build_region

REGION_FIELDS = ("category", "phrase")  # what a slot made of the phrase can answer


LOOKUP_QUESTION = "Name the box of each object."


def lookup_turns(slots: list[str], rng: np.random.Generator, pairs: int = 6) -> list[dict]:
    """A one-hop curriculum turn: the answer lists ``phrase<objK>`` pairs, so each index is
    predicted right after its phrase. A from-scratch LLM learns this content lookup long
    before the real format's two-hop one (phrase, ``</ground><objects>``, index), and the
    lookup heads it grows are what the real format needs (docs/training.md)."""
    picks = rng.permutation(len(slots))[:pairs]
    return [{"role": "user", "content": LOOKUP_QUESTION}, {"role": "assistant", "content": " ".join(slots[k] + format_object(k) for k in picks)}]


def build_sample(record: dict, rng: np.random.Generator, turns: int, max_slots: int = 100, lookup: float = 0.0) -> tuple[list[str], list[dict]] | None:
    """(slot phrases in prompt order, conversation) for one record, or None if unusable.

    Each turn is a one-hop lookup turn with probability ``lookup``, else a real task."""
    regions = [r for r in record.get("regions", []) if r.get("phrase")]
    if not regions or len(regions) != len(record.get("regions", [])):
        return None
    order = rng.permutation(len(regions))[:max_slots]
    region_to_index: list[int | None] = [None] * len(regions)
    for slot, r in enumerate(order):
        region_to_index[int(r)] = slot
    slim = {**record, "regions": [{k: r[k] for k in REGION_FIELDS if k in r} for r in regions]}
    conversation = []
    slots = [regions[int(r)]["phrase"] for r in order]
    for _ in range(turns):
        if lookup and rng.random() < lookup:
            conversation.extend(lookup_turns(slots, rng))
            continue
        builder = build_detection if rng.random() < 0.7 else build_region
        turn = builder(slim if builder is build_region else record, region_to_index, rng)
        if turn is None:
            turn = build_detection(record, region_to_index, rng)
        if turn is None:
            return None
        conversation.extend(turn)
    return slots, conversation


class TextRetrievalData(torch.utils.data.IterableDataset):
    """Endless stream of ``(input_ids, labels, slot_token_ids)`` from records (no images read)."""

    def __init__(self, paths, processor, turns: int, seed: int, lookup: float = 0.0):
        self.records, self.processor, self.turns, self.seed, self.lookup = JsonlRecords(paths), processor, turns, seed, lookup

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, worker.id if worker else 0])
        tok = self.processor.tokenizer
        while True:
            built = build_sample(self.records.raw(int(rng.integers(len(self.records)))), rng, self.turns, lookup=self.lookup)
            if built is None:
                continue
            slots, conversation = built
            ids, labels = self.processor.encode_sample(conversation, num_boxes=len(slots), has_image=False)
            yield ids, labels, [tok(" " + s, add_special_tokens=False)["input_ids"] for s in slots]


def collate(items, pad_id: int):
    width = max(len(ids) for ids, _, _ in items)
    input_ids = torch.full((len(items), width), pad_id)
    labels = torch.full((len(items), width), IGNORE_INDEX)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, lab, _) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "slots": [s for _, _, s in items]}


def slot_features(embedding: torch.nn.Embedding, slots: list[list[list[int]]]) -> list[torch.Tensor]:
    """Per sample, (K, H): the mean input embedding of each slot phrase's tokens."""
    out = []
    for sample in slots:
        out.append(torch.stack([embedding.weight[torch.tensor(ids)].mean(0) for ids in sample]))
    return out


@torch.no_grad()
def reinit(module: torch.nn.Module, std: float) -> None:
    """Fresh weights for ``module``: linear/embedding ~ N(0, std), biases 0, norm weights 1."""
    if std <= 0:
        raise ValueError(f"--reinit-llm-std must be > 0, got {std}")
    for sub in module.modules():
        if isinstance(sub, (torch.nn.Linear, torch.nn.Embedding)):
            sub.weight.normal_(0.0, std)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
        elif hasattr(sub, "weight") and sub.weight is not None and sub.weight.ndim == 1:
            sub.weight.fill_(1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.text_pretrain", description=__doc__.split("\n\n")[0],
                                epilog="Examples::" + __doc__.split("Examples::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", required=True, help="ChatRex folder (e.g. stage 0's OUT/final) or a bundled model (chatrex-tiny)")
    p.add_argument("--records", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reinit-llm-std", type=float, default=None,
                   help="re-initialise the LLM (linear and embedding weights ~ N(0, std), norms 1, biases 0) before training. "
                        "Transformers' default 0.02 is too small for a tiny from-scratch model to start content-based retrieval; 0.045 works (docs/training.md)")
    p.add_argument("--lookup", type=float, default=0.0,
                   help="probability that a turn is a one-hop lookup turn (phrase<objK> pairs), a curriculum for content lookup")
    p.add_argument("--object-index-embedding", action="store_true",
                   help="turn on config.object_index_embedding (the chatrex-tiny-scratch preset has it; use for folders saved before it existed)")
    p.add_argument("--object-pointer", action="store_true",
                   help="turn on config.object_pointer_head and config.object_reference_features (the chatrex-tiny-scratch preset has "
                        "them; use for folders saved before they existed). The pointer head trains with the LLM")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "turns", "log_every", "save_every"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    for path in args.records:
        if not os.path.isfile(path):
            print(f"error: records file not found: {path}", file=sys.stderr)
            return 2
    from .model_loading import init_folder, load_model_and_processor, upn_folder

    try:
        if init_folder(args.init) is None:
            raise ValueError(f"--init {args.init!r} is a preset (random weights); give a ChatRex folder or a bundled model")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    overrides = {}
    if args.object_index_embedding:
        overrides["object_index_embedding"] = True
    if args.object_pointer:
        overrides.update(object_pointer_head=True, object_reference_features=True)
    model, processor = load_model_and_processor(args.init, config_overrides=overrides or None)
    if args.reinit_llm_std is not None:
        reinit(model.model.language_model, args.reinit_llm_std)
        model.tie_weights()
    model.train()
    for prm in model.model.vision_low.parameters():
        prm.requires_grad_(False)
    for prm in model.model.vision_high.parameters():
        prm.requires_grad_(False)
    trained = [model.model.language_model, model.lm_head] + ([model.object_pointer] if model.object_pointer is not None else [])
    params = [prm for module in trained for prm in module.parameters() if prm.requires_grad]
    params = list({id(x): x for x in params}.values())  # tied embeddings once
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.steps)
    if not 0.0 <= args.lookup <= 1.0:
        print(f"error: --lookup must be in [0, 1], got {args.lookup}", file=sys.stderr)
        return 2
    data = TextRetrievalData(args.records, processor, args.turns, args.seed, args.lookup)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=lambda b: collate(b, processor.tokenizer.pad_token_id), num_workers=1)
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "metrics.jsonl"), "a")
    start = time.time()

    def save(name: str) -> str:
        return save_pretrained_atomic(model, processor, os.path.join(args.out, name), upn=upn_folder(args.init))

    step = 0
    try:
        with tqdm(total=args.steps, desc="text pretrain", dynamic_ncols=True) as bar:
            for batch in loader:
                objects = slot_features(model.get_input_embeddings(), batch.pop("slots"))
                out = model(**batch, object_features=objects)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)
                if step % args.log_every == 0:
                    index_acc = index_accuracy(out.logits, batch["labels"], model.config.object_token_ids)
                    log.write(json.dumps({"step": step, "loss": round(out.loss.item(), 4), "index_acc": index_acc, "elapsed_s": round(time.time() - start, 1)}) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{out.loss.item():.3f}", index_acc=index_acc)
                if step % args.save_every == 0:
                    save("last")
                if step >= args.steps:
                    break
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; saved {save('last')}", file=sys.stderr)
        return 130
    print(f"wrote {save('final')} after {step} steps in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

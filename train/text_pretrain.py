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

It runs in the project's one training loop (``train.loop``): exact resume (``--resume``),
``--max-minutes``, ``--grad-accum``, mixed precision, DeepSpeed and ``OUT/metrics.jsonl`` as in
every stage; the result is ``OUT/final``.

Examples::

    python -m train.text_pretrain --init runs/chatrex-tiny/vision/final --records data/synth/train/records.jsonl \\
        --steps 1500 --out runs/chatrex-tiny/text
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.text.markup import format_object
from chatrex.utils.jsonl import JsonlRecords

from .answer_metrics import index_accuracy
from .checkpointing import save_pretrained_into
from .dataset import EpochSampler
from .loop import TrainingData, TrainingTask, add_loop_arguments, check_files, run_config, run_from_cli
from .model_loading import check_init
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


MAX_DRAWS = 100  # records tried for one sample before the data is declared unusable


class TextRetrievalData(torch.utils.data.Dataset):
    """``(input_ids, labels, slot_token_ids)`` per :class:`~train.dataset.EpochSampler` key
    (``epoch * N + i``; no images read). Record ``i`` is used, or, when it cannot make a sample
    (a region without a phrase), another drawn from the key's own generator, so every key
    always gives the same sample (exact resume) and every epoch new conversations."""

    def __init__(self, paths, processor, turns: int, seed: int, lookup: float = 0.0):
        self.records, self.processor, self.turns, self.seed, self.lookup = JsonlRecords(paths), processor, turns, seed, lookup

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int):
        rng = np.random.default_rng([self.seed, key])
        index = key % len(self.records)
        for _ in range(MAX_DRAWS):
            built = build_sample(self.records.raw(index), rng, self.turns, lookup=self.lookup)
            if built is not None:
                break
            index = int(rng.integers(len(self.records)))
        else:
            raise ValueError(f"{MAX_DRAWS} records in a row could not make a text sample: every region needs a phrase")
        slots, conversation = built
        ids, labels = self.processor.encode_sample(conversation, num_boxes=len(slots), has_image=False)
        tok = self.processor.tokenizer
        return ids, labels, [tok(" " + s, add_special_tokens=False)["input_ids"] for s in slots]


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


class TextPretrainTask(TrainingTask):
    """Stage 0b for :func:`train.loop.run_training` (module doc): only the LLM (and the pointer
    head, when the model has one) trains."""

    description = "text pretrain"
    zero3 = False  # slot features read the embedding matrix outside the forward, where ZeRO-3 has sharded it

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def build(self, accelerator):
        from .model_loading import load_model_and_processor, upn_folder

        args = self.args
        self.accelerator = accelerator
        overrides = {}
        if args.object_index_embedding:
            overrides["object_index_embedding"] = True
        if args.object_pointer:
            overrides.update(object_pointer_head=True, object_reference_features=True)
        model, self.processor = load_model_and_processor(args.init, config_overrides=overrides or None)
        self.upn = upn_folder(args.init)
        if args.reinit_llm_std is not None:
            reinit(model.model.language_model, args.reinit_llm_std)
            model.tie_weights()
        model.requires_grad_(False)
        for module in [model.model.language_model, model.lm_head] + ([model.object_pointer] if model.object_pointer is not None else []):
            module.requires_grad_(True)
        self.zero_hidden_size = model.config.text_config.hidden_size
        self.object_token_ids = model.config.object_token_ids
        return model

    def param_groups(self, module):
        return [{"name": "llm", "params": [p for p in module.parameters() if p.requires_grad]}]  # tied embeddings once

    def scheduler(self, optimizer, max_steps):
        return get_cosine_schedule_with_warmup(optimizer, self.args.warmup_steps, max_steps)

    def train_data(self):
        data = TextRetrievalData(self.args.records, self.processor, self.args.turns, self.args.seed, self.args.lookup)
        return TrainingData(data, EpochSampler(len(data), seed=self.args.seed),
                            functools.partial(collate, pad_id=self.processor.tokenizer.pad_token_id))

    def loss(self, model, batch):
        embedding = self.accelerator.unwrap_model(model).get_input_embeddings()
        objects = slot_features(embedding, batch["slots"])
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"], object_features=objects)
        index_acc = index_accuracy(out.logits.detach(), batch["labels"], self.object_token_ids)
        return out.loss, ({} if index_acc is None else {"index_acc": index_acc})

    def save(self, module, folder, state_dict):
        save_pretrained_into(folder, module, self.processor, self.upn, state_dict)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.text_pretrain", description="Stage 0b: teach a from-scratch LLM to copy phrases "
                                "and to look up boxes, from text (object slots filled with phrase embeddings); only the LLM trains.",
                                epilog="Examples::" + __doc__.split("Examples::")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", required=True, help="ChatRex folder (e.g. stage 0's OUT/final) or a bundled model (chatrex-tiny)")
    p.add_argument("--records", nargs="+", required=True, help="training records.jsonl (regions with phrases); no images are read")
    p.add_argument("--turns", type=int, default=6, help="question-answer turns per sample (default 6)")
    p.add_argument("--reinit-llm-std", type=float, default=None,
                   help="re-initialise the LLM (linear and embedding weights ~ N(0, std), norms 1, biases 0) before training. "
                        "Transformers' default 0.02 is too small for a tiny from-scratch model to start content-based retrieval; 0.045 works (docs/training.md)")
    p.add_argument("--lookup", type=float, default=0.0,
                   help="probability that a turn is a one-hop lookup turn (phrase<objK> pairs), a curriculum for content lookup (default 0)")
    p.add_argument("--object-index-embedding", action="store_true",
                   help="turn on config.object_index_embedding (the chatrex-tiny-scratch preset has it; use for folders saved before it existed)")
    p.add_argument("--object-pointer", action="store_true",
                   help="turn on config.object_pointer_head and config.object_reference_features (the chatrex-tiny-scratch preset has "
                        "them; use for folders saved before they existed). The pointer head trains with the LLM")
    add_loop_arguments(p, steps=1500, batch_size=16, lr=1e-3, warmup_steps=50, save_every=250, log_every=20, workers=1)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.turns <= 0:
            raise ValueError(f"--turns must be positive, got {args.turns}")
        if args.reinit_llm_std is not None and not args.reinit_llm_std > 0:
            raise ValueError(f"--reinit-llm-std must be > 0, got {args.reinit_llm_std}")
        if not 0.0 <= args.lookup <= 1.0:
            raise ValueError(f"--lookup must be in [0, 1], got {args.lookup}")
        check_files("--records", args.records)
        run = run_config(args)
        check_init(args.init, presets=False)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_from_cli(TextPretrainTask(args), run, max_grad_norm=1.0, num_workers=args.workers, resume=args.resume,
                        force_cpu=args.cpu, optimizer_options={"lr": args.lr, "weight_decay": 0.01})


if __name__ == "__main__":
    sys.exit(main())

"""``chatrex bench``: the ChatRex paper's COCO / LVIS / RefCOCO protocols on the real files.

    chatrex bench coco --ann annotations/instances_val2017.json --images val2017 --model M --out runs/bench/coco
    chatrex bench lvis --ann lvis_v1_minival.json --images coco --model M --out runs/bench/lvis
    chatrex bench refcoco --format mdetr mdetr_annotations/finetune_refcoco_val.json --images train2014 \\
        --dataset refcoco --split val --model M --out runs/bench/refcoco_val
    chatrex bench refcoco --format mdetr mdetr_annotations --all-splits --images train2014 --model M --out runs/bench/rec

The paper's protocol is the default; every knob is a flag, printed with the result and stored
in metrics.json. A killed run continues when the same command is run again. Several
processes: --num-processes N (one machine), or ``accelerate launch --multi_gpu -m chatrex.bench ...``
/ ``torchrun --nproc_per_node N -m chatrex.bench ...`` (one GPU per process with --device cuda).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ..cli.main import _one_line, _output_policy
from . import detection, rec, runner
from .protocol import (
    CATEGORY_MODES,
    PROMPT_MODES,
    PROPOSAL_PROMPTS,
    DetectionProtocol,
    ProposalProtocol,
    RecProtocol,
    describe,
)
from .runner import BenchError

REC_FORMATS = ("mdetr", "refer", "parquet", "jsonl")
RANK_ENV, WORLD_ENV = "CHATREX_BENCH_RANK", "CHATREX_BENCH_WORLD"


def _optional_float(text: str):
    return None if text.lower() == "none" else float(text)


def _optional_int(text: str):
    return None if text.lower() == "none" else int(text)


def _common(p) -> None:
    p.add_argument("--images", required=True, help="folder the annotation file's image paths are relative to")
    p.add_argument("--model", default="chatrex-tiny", help="bundled model name or local folder (default chatrex-tiny)")
    p.add_argument("--upn", help="UPN folder (default: the model folder's upn/)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, results.json / predictions.jsonl, parts/)")
    g = p.add_argument_group("proposals (the paper's protocol by default)")
    g.add_argument("--proposal-prompt", choices=PROPOSAL_PROMPTS, default="fine", help="UPN prompt (default fine, the paper's fine-grained prompt)")
    g.add_argument("--min-score", type=float, default=0.3, help="keep proposals with UPN score >= this (default 0.3)")
    g.add_argument("--max-proposals", type=int, default=100, help="top N by score (default 100, the object tokens)")
    g.add_argument("--nms", type=_optional_float, default=0.8, metavar="IOU|none", help="class-agnostic NMS IoU (default 0.8, the official README's)")
    g.add_argument("--score-decimals", type=_optional_int, default=2, metavar="N|none",
                   help="round UPN scores as the official wrapper does (default 2; ties keep UPN's order)")
    r = p.add_argument_group("run")
    r.add_argument("--limit", type=int, help="the first N images (detection) or sentences (REC) only")
    r.add_argument("--num-processes", type=int, default=1, help="shard over N processes on this machine (default 1)")
    r.add_argument("--batch-size", type=int, default=1,
                   help="images per UPN forward pass (default 1; larger batches pad images to a common size, which can move a proposal slightly)")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; with several processes, cuda means one GPU per process")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32 on cpu, bfloat16 on cuda)")
    r.add_argument("--overwrite", action="store_true", help="discard the predictions already in --out instead of resuming them")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument("--verbose", action="store_true", help="show library messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatrex bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name in ("coco", "lvis"):
        p = sub.add_parser(name, help=f"{name.upper()} detection: P/R@0.5 per class, mAP" + (" (AP/APr/APc/APf, LVIS rules)" if name == "lvis" else ""),
                           description=f"{name.upper()} detection under the ChatRex protocol; writes metrics.json and results.json (COCO results format).")
        p.add_argument("--ann", required=True, help="instances JSON (COCO val2017: instances_val2017.json; LVIS: lvis_v1_minival*.json)")
        _common(p)
        p.add_argument("--categories", choices=CATEGORY_MODES, default="gt-present", help="which categories are asked (default gt-present, the paper's)")
        p.add_argument("--prompt-mode", choices=PROMPT_MODES, default="joint",
                       help='joint: all categories in one prompt, joined with "; " (the official README); per-category: one prompt each')
        p.set_defaults(kind="detection")
    p = sub.add_parser("refcoco", help="RefCOCO / RefCOCO+ / RefCOCOg: Acc@0.5 on the first box, proposal ceiling",
                       description="One question per sentence; writes metrics.json and predictions.jsonl.")
    p.add_argument("--format", required=True, choices=REC_FORMATS, help="source format (as chatrex data import refcoco)")
    p.add_argument("src", help="the source file (a folder with --all-splits)")
    p.add_argument("--dataset", choices=("refcoco", "refcoco+", "refcocog"), help="which dataset the source holds")
    p.add_argument("--split", help="val, testA, testB (RefCOCO/+), val, test (RefCOCOg)")
    p.add_argument("--split-by", choices=("unc", "umd", "google"), help="refer format: which refs(...).p (default unc, umd for refcocog)")
    p.add_argument("--all-splits", action="store_true", help="the 8 standard splits from a folder of sources, in one table")
    _common(p)
    p.set_defaults(kind="rec")
    return parser


def _model_description(args) -> dict:
    """The model part of a run's identity: a folder by its absolute path, a bundled model by name."""
    def where(path):
        return os.path.abspath(path) if path and os.path.exists(path) else path

    return {"model": where(args.model), "upn": where(args.upn), "dtype": args.dtype, "device_type": args.device.split(":")[0]}


def _check_flags(args) -> None:
    """Range errors in the user's words (the flags), before the protocol's own checks."""
    checks = [
        (0.0 <= args.min_score <= 1.0, f"--min-score must be in [0, 1], got {args.min_score}"),
        (1 <= args.max_proposals <= 100, f"--max-proposals must be in [1, 100] (the model has 100 object tokens), got {args.max_proposals}"),
        (args.nms is None or 0.0 < args.nms <= 1.0, f"--nms must be an IoU in (0, 1] or none, got {args.nms}"),
        (args.score_decimals is None or 0 <= args.score_decimals <= 6, f"--score-decimals must be in [0, 6] or none, got {args.score_decimals}"),
        (args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}"),
        (args.num_processes >= 1, f"--num-processes must be >= 1, got {args.num_processes}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchError(message)


def _proposals(args) -> ProposalProtocol:
    return ProposalProtocol(prompt=args.proposal_prompt, min_score=args.min_score, max_proposals=args.max_proposals, nms_iou=args.nms,
                            score_decimals=args.score_decimals)


def _rank_world() -> tuple[int, int, int]:
    """(rank, world size, local rank): ours for --num-processes, else torchrun's / accelerate's."""
    if WORLD_ENV in os.environ:
        return int(os.environ[RANK_ENV]), int(os.environ[WORLD_ENV]), int(os.environ[RANK_ENV])
    world = int(os.environ.get("WORLD_SIZE", 1))
    return int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0))


def _answerer(args, proposals: ProposalProtocol, local_rank: int, world: int):
    from ..predictor import ChatRexPredictor, resolve_device_dtype
    from .answerer import PredictorAnswerer

    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    try:
        resolve_device_dtype(device, args.dtype)
        predictor = ChatRexPredictor.from_pretrained(args.model, upn=args.upn, device=device, torch_dtype=args.dtype)
        return PredictorAnswerer(predictor, proposals)
    except (ValueError, RuntimeError, OSError) as err:
        raise BenchError(_one_line(err)) from None


def _sentences(fmt: str, src: str, images: str, dataset, split, split_by, limit):
    from ..datasets.refcoco import iter_sentences

    try:
        sentences = list(iter_sentences(fmt, src, images, dataset=dataset, split=split, split_by=split_by))
    except (OSError, ValueError, KeyError) as err:
        raise BenchError(_one_line(err)) from None
    if limit is not None:
        sentences = sentences[:limit]
    if not sentences:
        raise BenchError(f"no sentences in {src}" + (f" for split {split!r}" if split else ""))
    seen = set()
    for s in sentences:
        if str(s.sent_id) in seen:
            raise BenchError(f"{src}: sentence id {s.sent_id!r} occurs twice; predictions are keyed by it")
        seen.add(str(s.sent_id))
    return sentences


def _rec_source(fmt: str, folder: str, dataset: str, split: str) -> str:
    """Where one of the standard splits lives in a folder of sources, by each format's own names."""
    if fmt == "mdetr":
        return os.path.join(folder, f"finetune_{dataset}_{split}.json")
    if fmt == "refer":
        return os.path.join(folder, dataset, f"refs({rec.SPLIT_BY[dataset]}).p")
    if fmt == "jsonl":
        return os.path.join(folder, f"{dataset}_{split}.jsonl")
    raise BenchError("--all-splits reads mdetr, refer or jsonl folders; run parquet splits one by one")


def _infer_dataset_split(args) -> None:
    """MDETR and InternVL name their files by dataset and split (finetune_refcoco+_testA.json,
    refcocog_val.jsonl): take those when the flags are not given. The refer format needs
    --split to pick sentences out of refs(...).p."""
    import re

    m = re.search(r"(refcocog|refcoco\+|refcoco)_(val|testA|testB|test|train)\.(json|jsonl)$", os.path.basename(args.src))
    if m:
        for flag, named in (("dataset", m.group(1)), ("split", m.group(2))):
            given = getattr(args, flag)
            if given is not None and given != named:  # e.g. --split testA on finetune_refcoco_val.json
                raise BenchError(f"--{flag} {given} contradicts the file name {os.path.basename(args.src)} ({named})")
            setattr(args, flag, named)
    if os.path.isdir(args.src) and args.format != "refer":
        raise BenchError(f"{args.src} is a folder: give one split's file, or --all-splits for the 8 standard splits")
    if args.format == "refer" and (args.dataset is None or args.split is None):
        raise BenchError("--format refer needs --dataset and --split (or --all-splits)")


def _spawn(argv: list[str], n: int) -> int:
    """Run this command as ``n`` worker processes (each predicts its shard), then merge here."""
    argv = list(argv)
    i = argv.index("--num-processes") if "--num-processes" in argv else None
    if i is not None:
        del argv[i:i + 2]
    # The parent has prepared (and, with --overwrite, emptied) the output folder already.
    argv = [a for a in argv if not a.startswith("--num-processes=") and a != "--overwrite"]
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    try:
        for rank in range(n):
            env = dict(os.environ, **{RANK_ENV: str(rank), WORLD_ENV: str(n), "OMP_NUM_THREADS": str(threads)})
            procs.append(subprocess.Popen([sys.executable, "-m", "chatrex.bench", *argv], env=env))
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    return max(codes)


def _print_result(title: str, protocol, metrics: dict) -> None:
    print(f"== {title}")
    model = metrics.get("model", {})
    print(f"model: {model.get('model')}" + (f" (upn {model['upn']})" if model.get("upn") else ""))
    print(describe(protocol))
    print("-" * 40)
    for k, v in metrics.items():
        if k in ("protocol", "model"):
            continue
        print(f"{k:<22} {v:.4f}" if isinstance(v, float) else f"{k:<22} {v}")


class Phases:
    """Which steps this process runs: prepare the output folder, predict its shard, merge.

    One process does all three. With --num-processes the parent prepares, its workers
    predict, and the parent merges. Under ``accelerate launch`` / ``torchrun`` rank 0 prepares and merges,
    with a barrier before and after the shards."""

    def __init__(self, prepare: bool, work: bool, merge: bool, rank: int = 0, world: int = 1, local_rank: int = 0, barrier=None):
        self.prepare, self.work, self.merge = prepare, work, merge
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._barrier = barrier

    def barrier(self) -> None:
        if self._barrier is not None:
            self._barrier()


def _detection(args, ph: Phases) -> int:
    protocol = DetectionProtocol(dataset=args.benchmark, annotations=os.path.abspath(args.ann), categories=args.categories,
                                 prompt_mode=args.prompt_mode, proposals=_proposals(args))
    gt = detection.load_ground_truth(args.ann, args.images, args.benchmark, args.limit)
    timer = args.timer
    if ph.prepare:
        runner.prepare_out_dir(args.out, runner.run_description(protocol, args.images, _model_description(args)), args.overwrite)
    ph.barrier()
    if ph.work:
        runner.check_images(t.path for t in runner.shard(gt.images, ph.rank, ph.world))
        answerer = _answerer(args, protocol.proposals, ph.local_rank, ph.world)
        runner.run_detection_shard(answerer, gt, protocol, args.out, ph.rank, ph.world, progress=not args.no_progress,
                                   batch_size=args.batch_size)
    ph.barrier()
    if ph.merge:
        metrics = runner.finalize_detection(gt, protocol, args.out, timer.seconds)
        _print_result(f"{args.benchmark} ({len(gt.images)} images) -> {args.out}", protocol, metrics)
    return 0


def _rec_one(args, fmt, src, dataset, split, out, ph: Phases, answerer_cache: dict) -> dict | None:
    split_by = args.split_by or (rec.SPLIT_BY.get(dataset) if fmt == "refer" and dataset else None)
    protocol = RecProtocol(dataset=dataset, split=split, source_format=fmt, source=os.path.abspath(src), proposals=_proposals(args))
    sentences = _sentences(fmt, src, args.images, dataset, split, split_by, args.limit)
    timer = args.timer
    if ph.prepare:
        runner.prepare_out_dir(out, runner.run_description(protocol, args.images, _model_description(args)), args.overwrite)
    ph.barrier()
    if ph.work:
        runner.check_images(g[0].image for g in runner.shard(rec.group_by_image(sentences), ph.rank, ph.world))
        if "answerer" not in answerer_cache:
            answerer_cache["answerer"] = _answerer(args, protocol.proposals, ph.local_rank, ph.world)
        runner.run_rec_shard(answerer_cache["answerer"], sentences, protocol, out, ph.rank, ph.world, progress=not args.no_progress,
                             batch_size=args.batch_size)
    ph.barrier()
    if ph.merge:
        metrics = runner.finalize_rec(sentences, protocol, out, timer.seconds)
        _print_result(f"{dataset or 'rec'} {split or ''} ({len(sentences)} sentences) -> {out}", protocol, metrics)
        return metrics
    return None


def _rec(args, ph: Phases) -> int:
    cache: dict = {}
    if not args.all_splits:
        _rec_one(args, args.format, args.src, args.dataset, args.split, args.out, ph, cache)
        return 0
    if not os.path.isdir(args.src):
        raise BenchError(f"--all-splits reads a folder of sources; {args.src} is not a folder")
    sources = {(d, s): _rec_source(args.format, args.src, d, s) for d, s in rec.STANDARD_SPLITS}
    missing = [p for p in sources.values() if not os.path.isfile(p)]
    if missing:  # before hours of the first splits, not after
        raise BenchError(f"--all-splits: {len(missing)} of {len(sources)} split files missing, e.g. {missing[0]}")
    table = {}
    for (dataset, split), src in sources.items():
        metrics = _rec_one(args, args.format, src, dataset, split, os.path.join(args.out, f"{dataset}_{split}"), ph, cache)
        if metrics is not None:
            table[f"{dataset} {split}"] = {k: metrics[k] for k in ("acc@0.5", "proposal_ceiling", "sentences")}
    if table:
        runner.write_json_atomic(os.path.join(args.out, "metrics.json"), {"splits": table})
        print("== all splits")
        for name, m in table.items():
            print(f"{name:<16} acc@0.5 {m['acc@0.5']:.4f}  ceiling {m['proposal_ceiling']:.4f}  sentences {m['sentences']}")
    return 0


def _launcher_phases(rank: int, world: int, local_rank: int) -> Phases:
    """Phases under ``accelerate launch`` or ``torchrun`` (RANK / WORLD_SIZE in the environment).

    The processes only need to wait for each other, so a gloo process group serves every
    device (accelerate's own state does not see a CPU torchrun launch as distributed). The
    timeout is long because rank 0 waits at the last barrier until the slowest shard ends."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
    return Phases(prepare=rank == 0, work=True, merge=rank == 0, rank=rank, world=world, local_rank=local_rank, barrier=dist.barrier)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.timer = runner.Timer()  # the whole command, workers included, for metrics.json "seconds"
    rank, world, local_rank = _rank_world()
    run = _detection if args.kind == "detection" else _rec
    try:
        _check_flags(args)
        if args.kind == "rec" and not args.all_splits:
            _infer_dataset_split(args)
        with _output_policy(args.verbose):
            if WORLD_ENV in os.environ:  # a --num-processes worker
                return run(args, Phases(prepare=False, work=True, merge=False, rank=rank, world=world, local_rank=local_rank))
            if world > 1:
                return run(args, _launcher_phases(rank, world, local_rank))
            if args.num_processes == 1:
                return run(args, Phases(prepare=True, work=True, merge=True))
            run(args, Phases(prepare=True, work=False, merge=False))
        # Workers report their own errors; the parent then stops with their exit code.
        code = _spawn(argv, args.num_processes)
        if code != 0:
            return code
        with _output_policy(args.verbose):
            return run(args, Phases(prepare=False, work=False, merge=True))
    except BenchError as err:
        print(f"chatrex bench {args.benchmark}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # e.g. a protocol knob out of range
        print(f"chatrex bench {args.benchmark}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

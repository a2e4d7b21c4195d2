"""The ``chatrex`` command line.

    chatrex detect examples/scene1.png "the red house" --out annotated.png
    chatrex ask examples/scene1.png "Is there a red house in the image?"
    chatrex proposals examples/scene1.png --granularity fine --out proposals.png
    chatrex eval --model chatrex-tiny --data synth:test --task referring
    chatrex data-engine run --input photos/ --output runs/engine
    chatrex data import coco --ann instances_val2017.json --images val2017 --out coco_val.jsonl
    chatrex bench coco --ann instances_val2017.json --images val2017 --model chatrex-tiny --out runs/bench/coco
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings

from .arguments import (
    DEFAULT_MODEL,
    UserError,
    _boxes_argument,
    _check_device,
    _device_arguments,
    _image_and_predictor,
    _load_image,
    _max_new_tokens,
    _one_line,
    _text_argument,
    _upn_argument,
    demo_arguments,
)


@contextlib.contextmanager
def _output_policy(verbose: bool):
    """Results go to stdout and nothing else is printed unless ``--verbose``: transformers'
    "Loading weights" bars and load reports, and library warnings, are switched off for the
    command and restored afterwards (``main`` may run inside another program, e.g. the tests)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        if verbose:
            hf_logging.set_verbosity_info()
            hf_logging.enable_progress_bar()
        else:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def _save(image, path: str) -> None:
    try:
        image.save(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write {path}: {err}") from None


def cmd_detect(args) -> int:
    if args.inputs is not None and args.items:
        raise UserError("give either IMAGE... PHRASE or --inputs FILE.jsonl, not both")
    if args.inputs is None and len(args.items) < 2:
        raise UserError("give one or more images and then the phrase (IMAGE... PHRASE), or --inputs FILE.jsonl")
    from .detect_many import check_common, detect_many

    check_common(args)
    if args.inputs is not None or len(args.items) > 2 or args.output is not None:
        return detect_many(args)
    args.image, args.phrase = args.items
    phrase = _text_argument(args.phrase, "phrase")
    image, predictor = _image_and_predictor(args)
    try:
        det = predictor.detect(phrase)
    except ValueError as err:  # e.g. a phrase longer than the model's context
        raise UserError(_one_line(err)) from None
    if args.json:
        print(json.dumps({"phrase": det.phrase, "boxes": [[round(v, 1) for v in b] for b in det.boxes], "answer": det.answer}))
    else:
        for b in det.boxes:
            print(" ".join(f"{v:.1f}" for v in b))
    if args.out:
        from ..visualize import draw_boxes

        _save(draw_boxes(image, det.boxes, [det.phrase] * len(det.boxes)), args.out)
    return 0


def cmd_ask(args) -> int:
    question = _text_argument(args.question, "question")
    image, predictor = _image_and_predictor(args)
    try:
        answer = predictor.ask(question)
    except ValueError as err:  # e.g. a question longer than the model's context
        raise UserError(_one_line(err)) from None
    if args.json:
        print(json.dumps({"question": args.question, "answer": answer.text, "raw": answer.raw,
                          "spans": [{"phrase": s.phrase, "start": s.start, "end": s.end, "boxes": s.boxes} for s in answer.spans]}))
    else:
        print(answer.text)
        for s in answer.spans:
            print(f"  {s.phrase}: " + "; ".join(" ".join(f"{v:.1f}" for v in b) for b in s.boxes))
    if args.out:
        from ..visualize import color_for, draw_boxes

        boxes, labels, colors = [], [], []
        for i, s in enumerate(answer.spans):
            boxes += s.boxes
            labels += [s.phrase] * len(s.boxes)
            colors += [color_for(i)] * len(s.boxes)
        _save(draw_boxes(image, boxes, labels, colors), args.out)
    return 0


def cmd_proposals(args) -> int:
    from ..predictor import UPN_SUBDIR, resolve_model_path

    _check_device(args)
    image = _load_image(args.image)
    try:
        from ..convert.upn import load_upn_predictor

        if args.upn is not None:
            path = _upn_argument(args.upn)
        else:
            path = os.path.join(resolve_model_path(args.model), UPN_SUBDIR)
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise UserError(f"no UPN weights in {path}; pass --upn (a folder, upn_large.pth, or upn-tiny)")
        predictor = load_upn_predictor(path, device=args.device)
        props = predictor.predict(image, prompt_type=args.granularity, min_score=args.min_score, nms_iou=args.nms_iou, max_boxes=args.max_boxes)
    except (ValueError, RuntimeError, OSError) as err:
        raise UserError(_one_line(err)) from None
    if args.json:
        print(json.dumps({"boxes": [[round(v, 1) for v in b] for b in props.boxes.tolist()], "scores": [round(s, 4) for s in props.scores.tolist()], "granularity": props.granularity}))
    else:
        for b, s, g in zip(props.boxes.tolist(), props.scores.tolist(), props.granularity):
            print(" ".join(f"{v:.1f}" for v in b) + f" {s:.3f} {g}")
    if args.out:
        from ..visualize import draw_boxes

        # Each box is labelled with its index in the list printed above: at the default settings
        # (both prompts, score >= 0.1, NMS 0.6, top 100) the index the chat's <objN> tokens use.
        colors = [(230, 159, 0) if g == "coarse" else (86, 180, 233) for g in props.granularity]
        _save(draw_boxes(image, props.boxes.tolist(), [str(i) for i in range(len(props.boxes))], colors), args.out)
    return 0


SYNTH_PREFIX = "synth:"


def _synthetic_split(spec: str, progress: bool) -> str:
    """``synth:SPLIT`` -> ``data/synth/SPLIT``, generated on first use with the model card's
    size and seed (:data:`chatrex.evaluation.runner.SYNTH_SPLITS`) and reused afterwards; a
    folder there that holds other images (another seed or size) is refused, not evaluated as if
    it were the standard split."""
    from ..evaluation.data_sources import SYNTH_EVAL_SPLITS, SYNTH_ROOT, SYNTH_SIZE, SYNTH_SPLITS, synthetic_command

    split = spec[len(SYNTH_PREFIX):]
    if split not in SYNTH_EVAL_SPLITS:
        raise UserError(f"unknown synthetic split {spec!r}; use " + ", ".join(SYNTH_PREFIX + s for s in SYNTH_EVAL_SPLITS))
    n, seed = SYNTH_SPLITS[split]
    out = os.path.join(SYNTH_ROOT, split)
    # The data engine sits above the model package: imported here, by the command, never by chatrex itself.
    from data_engine.synthetic.generator import image_name, write_split

    records = os.path.join(out, "records.jsonl")
    if os.path.isfile(records):
        with open(records, "rb") as f:
            lines = [line for line in f if line.strip()]
        first = json.loads(lines[0]) if lines else {}
        if len(lines) != n or first.get("image") != image_name(split, seed, 0) or first.get("width") != SYNTH_SIZE:
            raise UserError(f"{out} holds {len(lines)} images that are not the standard synthetic {split} split ({n} images, seed {seed}, "
                            f"{SYNTH_SIZE} px); evaluate it with --data {out}, or move it away and run again to generate the standard one")
        return out
    print(f"generating the synthetic {split} split ({n} images, seed {seed}, {SYNTH_SIZE} px) into {out}; later runs reuse it "
          f"(the same as `{synthetic_command(split, out)}`)", file=sys.stderr)
    try:
        write_split(out, split, n, seed, size=SYNTH_SIZE, progress=progress)
    except OSError as err:
        raise UserError(f"cannot write the synthetic {split} split to {out}: {err}") from None
    return out


def cmd_eval(args) -> int:
    from ..evaluation.runner import evaluate, missing_records_message, records_file

    # Progress bars on a terminal or with --verbose: stderr stays empty in scripts and logs.
    progress = not args.no_progress and (args.verbose or sys.stderr.isatty())
    if args.data.startswith(SYNTH_PREFIX):
        args.data = _synthetic_split(args.data, progress=progress)
    if not os.path.isfile(records_file(args.data)):
        raise UserError(missing_records_message(args.data))
    try:
        table = evaluate(args.model, args.data, args.task, limit=args.limit, upn=args.upn, progress=progress, per_image=args.per_image,
                         proposal_min_score=args.proposal_min_score, batch_size=args.batch_size)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        raise UserError(f"{type(err).__name__}: {err}") from None
    print(table.format())
    if args.json_out:
        try:
            from ..utils.atomic import atomic_write

            with atomic_write(args.json_out) as f:
                json.dump(table.metrics, f, indent=2)
        except OSError as err:
            raise UserError(f"cannot write {args.json_out}: {err}") from None
    return 0


def cmd_demo(args) -> int:
    from demo.app import serve

    _check_device(args)
    return serve(model=args.model, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype)


def _run_data_engine(argv: list[str]) -> int:
    # The data engine sits above the model package: imported here, by the command, never by chatrex itself.
    from data_engine.cli import main as engine_main

    return engine_main(argv)


def _run_data(argv: list[str]) -> int:
    from ..datasets.cli import main as data_main

    return data_main(argv)


def _run_bench(argv: list[str]) -> int:
    from ..bench.cli import main as bench_main

    return bench_main(argv)


def _add_forwarded(sub, name: str, run, help: str) -> None:
    """A command whose arguments, ``--help`` included, all go to its own command line ``run``.
    argparse would read a leading ``--help`` or ``--input`` as an option of this subparser and
    refuse it, so the subparser gets a prefix character no command-line argument can start with
    (NUL): every argument is then a positional, and REMAINDER hands them on unchanged."""
    p = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")
    p.add_argument("forwarded", nargs=argparse.REMAINDER)
    p.set_defaults(forward=run)


def build_parser() -> argparse.ArgumentParser:
    from ..evaluation.data_sources import TASKS

    parser = argparse.ArgumentParser(prog="chatrex", description="Grounded multimodal chat: the model answers with box indices from a proposal network.",
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, image=True):
        if image:
            p.add_argument("image", help="image file (any format PIL reads)")
        p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled model name, local folder or Hugging Face id (default {DEFAULT_MODEL})")
        p.add_argument("--upn", help="UPN folder, upn_large.pth, bundled name (upn-tiny) or Hugging Face id (default: the model folder's upn/)")
        p.add_argument("--verbose", action="store_true", help="show progress bars and library messages on stderr")

    p = sub.add_parser("detect", help="find the objects a phrase refers to, in one image or many",
                       usage="chatrex detect [options] IMAGE [IMAGE ...] PHRASE\n       chatrex detect [options] --inputs FILE.jsonl [--output FILE.jsonl [--resume]]",
                       epilog='examples:\n  chatrex detect examples/scene1.png "the red house" --out annotated.png\n'
                              '  chatrex detect examples/*.png boat --output boats.jsonl --batch-size 8\n'
                              '  chatrex detect --inputs queries.jsonl --output results.jsonl --resume',
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="One image: print one line per box (x1 y1 x2 y2, original pixels), or JSON with --json.\n"
                                   "Several images, or --inputs: one JSON line per input, written as each batch finishes:\n"
                                   '  {"image", "phrase", "boxes", "scores", "indices", "answer"}, or {"image", "phrase", "error"}\n'
                                   "for an image that cannot be read (the run goes on; the exit code is still 0). A progress\n"
                                   "bar goes to stderr when the results do not go to a terminal, or with --verbose.\n"
                                   "One image with --output also writes a JSON line.")
    common(p, image=False)
    p.add_argument("items", nargs="*", metavar="IMAGE... PHRASE", help="image files, then the category, short phrase or referring expression")
    p.add_argument("--inputs", metavar="FILE.jsonl", help='{"image": PATH, "phrase": TEXT} lines, image paths relative to the file\'s folder')
    p.add_argument("--output", metavar="FILE.jsonl", help="write the JSON lines here instead of stdout (needed by --resume)")
    p.add_argument("--resume", action="store_true", help="continue an --output file a stopped run left: inputs with a line are skipped (error lines too: delete one to retry it)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch through the proposal network, the encoders and generation (default 8)")
    p.add_argument("--out", help="one image: write it with labelled boxes here")
    p.add_argument("--json", action="store_true", help='one image: print {"phrase", "boxes", "answer"} as one JSON object')
    _boxes_argument(p)
    _device_arguments(p)
    p.add_argument("--max-new-tokens", type=_max_new_tokens, default=256, metavar="N", help="longest answer in tokens (default 256)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("ask", help="ask a question about an image", epilog='example: chatrex ask examples/scene1.png "Is there a red house in the image?"',
                       description="Print the answer; grounded phrases are listed with their boxes.")
    common(p)
    p.add_argument("question")
    p.add_argument("--out", help="write the image with the answer's boxes here")
    p.add_argument("--json", action="store_true", help="print the answer, raw text and spans as JSON")
    _boxes_argument(p)
    _device_arguments(p)
    p.add_argument("--max-new-tokens", type=_max_new_tokens, default=256, metavar="N", help="longest answer in tokens (default 256)")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("proposals", help="show the proposal network's boxes", epilog="example: chatrex proposals examples/scene1.png --granularity fine --out props.png",
                       description="Print one line per proposal: x1 y1 x2 y2 score granularity.")
    common(p)
    p.add_argument("--granularity", choices=["fine", "coarse", "both"], default="both")
    p.add_argument("--min-score", type=float, default=0.1, help="score threshold (default 0.1, the chat's box list)")
    p.add_argument("--nms-iou", type=float, default=0.6, help="class-agnostic NMS IoU (default 0.6, the chat's box list)")
    p.add_argument("--max-boxes", type=int, default=100)
    p.add_argument("--out", help="write the image with the proposals drawn and numbered by index (coarse orange, fine blue)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="torch device for the proposal network, e.g. cuda (default cpu)")
    p.set_defaults(func=cmd_proposals)

    from .convert import add_convert_parser

    add_convert_parser(sub)

    p = sub.add_parser("eval", help="evaluate on a records folder (docs/evaluation.md metrics)", epilog="example: chatrex eval --model chatrex-tiny --data synth:test --task detection --limit 100",
                       description="Detection: per-class-averaged P/R at IoU 0.5 and pycocotools mAP; referring: Acc@0.5; proposals: recall@100 (fine/coarse); region: category accuracy.")
    common(p, image=False)
    p.add_argument("--data", required=True, help="folder with records.jsonl and images, a records .jsonl file, or synth:test / synth:val / "
                   "synth:heldout (the bundled model's synthetic splits, generated into data/synth/ on first use)")
    p.add_argument("--task", required=True, choices=TASKS, help="what to score (docs/evaluation.md): detection P/R and mAP, referring Acc@0.5, "
                   "region category accuracy, proposal recall, grounded-caption P/R")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--proposal-min-score", type=float, help="UPN score threshold for the box list (default: the predictor's)")
    p.add_argument("--per-image", type=int, help="at most N queries per image (categories, expressions or regions), drawn reproducibly")
    p.add_argument("--json-out", help="also write the metrics as JSON here")
    p.add_argument("--batch-size", type=int, default=8, help="an image's questions per generate call, over its shared prefix (default 8; "
                   "the metrics do not depend on it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal or with --verbose")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="serve the Gradio chat demo", epilog="example: chatrex demo --port 7860",
                       description="Chat with box answers and a proposals view, on http://HOST:PORT (loopback by default).")
    demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    # Parsed by their own modules, which print their own --help.
    _add_forwarded(sub, "data-engine", _run_data_engine, help="run the data engine (run | stats); see chatrex data-engine --help")
    _add_forwarded(sub, "data", _run_data,
                   help="import real datasets (COCO, LVIS, RefCOCO, LLaVA, Rexverse-2M, VG) to records; see chatrex data --help")
    _add_forwarded(sub, "bench", _run_bench, help="the paper's COCO / LVIS / RefCOCO benchmarks; see chatrex bench --help")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "forward"):  # these commands keep their own output and error handling
        return args.forward(args.forwarded)
    try:
        with _output_policy(getattr(args, "verbose", False)):
            return args.func(args)
    except UserError as err:
        print(f"chatrex {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m chatrex.cli.main` runs this file as __main__, a second copy of the module whose
    # UserError the subcommands (which import chatrex.cli.main) do not raise: run the real one.
    from chatrex.cli.main import main as _main

    sys.exit(_main())

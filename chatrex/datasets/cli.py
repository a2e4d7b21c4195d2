"""``chatrex data import FORMAT ... --out RECORDS.jsonl``: public datasets -> records.

The summary line goes to stdout; progress bars, bad-row reports and warnings to stderr. A user
error (a missing file, an unsafe pickle, an unknown schema, a bad row under ``--strict``) is
one line ``chatrex data import: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..cli.main import _one_line
from . import leakage

PROG = "chatrex data"
_FMT = argparse.RawDescriptionHelpFormatter

EXAMPLES = {
    "coco": """examples:
  chatrex data import coco --ann annotations/instances_val2017.json --images coco/val2017 --out data/coco_val2017.jsonl
  chatrex data import coco --ann objects365/zhiyuan_objv2_val.json --images objects365/val --out data/o365_val.jsonl

Objects365 is recognised by the annotation file name (objects365*, zhiyuan_objv*) or forced
with --objects365: images are looked up as DIR/patchN/<file> (then DIR/<file_name>), and
category names are cleaned for prompts ("Cigar/Cigarette " -> "cigar or cigarette").
Writes OUT and OUT.categories.json (OUT without .jsonl); bad rows go to OUT.bad.jsonl.""",
    "lvis": """example:
  chatrex data import lvis --ann lvis_v1_minival.json --images coco --out data/lvis_minival.jsonl

DIR holds val2017/ and train2017/ (paths come from file_name, else from coco_url).""",
    "refcoco": """examples:
  chatrex data import refcoco --format mdetr mdetr_annotations/finetune_refcoco_val.json --images coco/train2014 --out data/refcoco_val.jsonl
  chatrex data import refcoco --format refer 'refer/data/refcoco/refs(unc).p' --split val --images coco/train2014 --out data/refcoco_val.jsonl
  chatrex data import refcoco --format refer refer/data/refcocog --split-by umd --split test --images coco/train2014 --out data/refcocog_test.jsonl
  chatrex data import refcoco --format parquet RefCOCO/data/testA-00000-of-00001.parquet --dataset refcoco --images data/refcoco_images --out data/refcoco_testA.jsonl
  chatrex data import refcoco --format jsonl refcoco+_testB.jsonl --images coco/train2014 --out data/refcoco+_testB.jsonl

--dataset, --split and --split-by are read from the path when not given. For parquet, --images
is where the embedded images are written. A sentence count that differs from the published
UNC/UMD split (e.g. one line per object) is warned about.""",
    "llava": """examples:
  chatrex data import llava --json llava_v1_5_mix665k.json --images llava_data --out data/llava665k.jsonl
  chatrex data import llava --json sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json --images llava_data sharegpt4v_data --out data/sharegpt4v.jsonl

Rows without "image" become text-only records; <image> moves to the front of the first human turn.""",
    "rexverse": """example:
  chatrex data import rexverse --images Rexverse-2M/0_500000_image.tsv --ann Rexverse-2M/0_500000_referring.annotations.tsv --image-dir data/rexverse_images --out data/rexverse_referring.jsonl

Both TSVs need their .lineidx next to them. The five image parts must be concatenated, in
order, into one 0_500000_image.tsv (the stored byte offsets are into that file).""",
    "vg": """example:
  chatrex data import vg --regions visual_genome/region_descriptions.json --images visual_genome --image-data visual_genome/image_data.json --out data/vg_regions.jsonl

DIR holds VG_100K/ and VG_100K_2/.""",
}


def _common(p) -> None:
    p.add_argument("--out", required=True, metavar="RECORDS.jsonl", help="records file to write (atomically, when the import completes)")
    p.add_argument("--strict", action="store_true", help="stop with exit code 2 at the first bad source row")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _sub(subs, name: str, help_text: str):
    p = subs.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name], formatter_class=_FMT)
    p.set_defaults(format_name=name)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Dataset tools: import public datasets into records (docs/records.md), and keep evaluation images out of training.",
                                     formatter_class=_FMT, epilog="""examples:
  chatrex data import coco --ann annotations/instances_val2017.json --images coco/val2017 --out data/coco_val2017.jsonl
  chatrex data import refcoco --format mdetr mdetr_annotations/finetune_refcoco_val.json --images coco/train2014 --out data/refcoco_val.jsonl
  chatrex data filter-leakage --train data/coco_train2017.jsonl --exclude data/refcoco_val.jsonl --out data/coco_train_clean.jsonl

formats: coco (also Objects365), lvis, refcoco, llava, rexverse, vg; `chatrex data import FORMAT --help`
shows each one's flags and examples. Where to download them: docs/benchmarks.md.""")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    imp = commands.add_parser("import", help="convert a public dataset to records (JSONL, pixel xyxy boxes, original ids kept)",
                              description="Convert a public dataset to records (docs/records.md, section 'Imported datasets').")
    subs = imp.add_subparsers(dest="format_name", metavar="FORMAT")
    leakage.add_parser(commands)

    p = _sub(subs, "coco", "COCO or Objects365 instances JSON")
    p.add_argument("--ann", required=True, help="instances JSON (bbox xywh)")
    p.add_argument("--images", required=True, metavar="DIR", help="image folder")
    p.add_argument("--objects365", action="store_true", default=None, help="treat as Objects365 (default: by file name)")
    _common(p)

    p = _sub(subs, "lvis", "LVIS v1 annotation JSON")
    p.add_argument("--ann", required=True, help="LVIS JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="COCO image root (val2017/, train2017/)")
    _common(p)

    p = _sub(subs, "refcoco", "RefCOCO / RefCOCO+ / RefCOCOg in MDETR, refer, lmms-lab parquet or Qwen JSONL format")
    p.add_argument("--format", required=True, choices=("mdetr", "refer", "parquet", "jsonl"), dest="ref_format",
                   help="mdetr: finetune_refcoco*_<split>.json; refer: refs(*).p + instances.json; "
                        "parquet: lmms-lab/RefCOCO*; jsonl: Qwen/InternVL lines (bbox pixel xyxy)")
    p.add_argument("src", metavar="SRC", help="the file (refer: refs(*).p or its folder; parquet: a file or folder)")
    p.add_argument("--images", required=True, metavar="DIR", help="COCO train2014 images (parquet: where to write the embedded ones)")
    p.add_argument("--dataset", choices=("refcoco", "refcoco+", "refcocog"), help="default: read from the path")
    p.add_argument("--split", choices=("val", "testA", "testB", "test", "train"),
                   help="refer: keep only this split; others: the file's split (default: read from the file name)")
    p.add_argument("--split-by", choices=("unc", "umd", "google"),
                   help="refer: which refs(<split-by>).p (default unc for refcoco/refcoco+, umd for refcocog)")
    _common(p)

    p = _sub(subs, "llava", "LLaVA-style conversation JSON (LLaVA 558k/665k, ShareGPT4V, ALLaVA)")
    p.add_argument("--json", required=True, help="JSON list of {id, image, conversations}")
    p.add_argument("--images", required=True, nargs="+", metavar="DIR", help="image root(s); the first that holds an image wins")
    _common(p)

    p = _sub(subs, "rexverse", "Rexverse-2M image TSV + annotation TSV (with .lineidx files)")
    p.add_argument("--images", required=True, metavar="TSV", help="image TSV (<key>\\t<base64>)")
    p.add_argument("--ann", required=True, metavar="TSV", help="annotation TSV (<image byte offset>\\t<JSON>)")
    p.add_argument("--image-dir", metavar="DIR", help="where decoded images go, as <image line>.jpg (default: OUT without .jsonl + .images/)")
    p.add_argument("--box-format", choices=("xyxy", "xywh"), default="xyxy", help="box convention of the annotation JSON (default xyxy pixels)")
    p.add_argument("--text-field", choices=("phrase", "referring", "description", "category"),
                   help="region field for the annotation text (default: from its key)")
    _common(p)

    p = _sub(subs, "vg", "Visual Genome region_descriptions.json")
    p.add_argument("--regions", required=True, help="region_descriptions.json")
    p.add_argument("--images", required=True, metavar="DIR", help="folder with VG_100K/ and VG_100K_2/")
    p.add_argument("--image-data", metavar="FILE", help="VG image_data.json: image sizes and COCO ids (else sizes are read from the images)")
    _common(p)
    parser.import_parser = imp
    return parser


def _run(args):
    progress, strict = not args.no_progress, args.strict
    name = args.format_name
    if name == "coco":
        from .coco import import_coco
        return import_coco(args.ann, args.images, args.out, objects365=args.objects365, strict=strict, progress=progress)
    if name == "lvis":
        from .lvis import import_lvis
        return import_lvis(args.ann, args.images, args.out, strict=strict, progress=progress)
    if name == "refcoco":
        from .refcoco import import_refcoco
        return import_refcoco(args.ref_format, args.src, args.images, args.out, dataset=args.dataset, split=args.split,
                              split_by=args.split_by, strict=strict, progress=progress)
    if name == "llava":
        from .llava import import_llava
        return import_llava(args.json, args.images, args.out, strict=strict, progress=progress)
    if name == "rexverse":
        from .rexverse import import_rexverse
        return import_rexverse(args.images, args.ann, args.out, image_dir=args.image_dir, box_format=args.box_format,
                               text_field=args.text_field, strict=strict, progress=progress)
    from .vg import import_vg
    return import_vg(args.regions, args.images, args.out, image_data=args.image_data, strict=strict, progress=progress)


# The source files each format reads (never to be overwritten by --out).
INPUT_FLAGS = ("ann", "json", "src", "regions", "image_data")


def _check_paths(args) -> str | None:
    """Mistakes worth refusing before reading gigabytes: --out is a folder or is a source file."""
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        return f"--out {args.out} is a folder; give the records file to write, e.g. {os.path.join(args.out, 'records.jsonl')}"
    inputs = [getattr(args, f, None) for f in INPUT_FLAGS]
    if args.format_name == "rexverse":
        inputs.append(args.images)
    for path in inputs:
        if isinstance(path, str) and os.path.abspath(path) == out:
            return f"--out {args.out} is the source file; write the records elsewhere"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "filter-leakage":
        return leakage.run(args)
    if getattr(args, "format_name", None) is None:
        parser.import_parser.print_help(sys.stderr)
        return 2
    problem = _check_paths(args)
    if problem:
        print(f"chatrex data import: error: {problem}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = _run(args)
        except (ValueError, OSError) as err:  # missing file, unsafe pickle, unknown schema, --strict bad row
            print(f"chatrex data import: error: {_one_line(err)}", file=sys.stderr)
            return 2
    for w in caught:
        print(f"chatrex data import: warning: {_one_line(w.message)}", file=sys.stderr)
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m train.finetune_tiny`` (``make finetune-tiny``): fine-tune the bundled chatrex-tiny
on fresh synthetic images and evaluate it before and after, in about five minutes on a 2-core
CPU (docs/training.md, "Fine-tune the bundled model in five minutes").

Steps, each skipped when its output exists and was made with the same settings;
``--from STEP`` redoes STEP and every step after it:

  data       fresh synthetic images (data_engine.synthetic): a train split (seed --seed) and an
             eval split (the test split, seed --seed + 1), in DATA/train-s*-n*/ and DATA/eval-s*-n*/
  proposals  the starting model's UPN proposals for the train images (records_upn.jsonl), in
             --jobs single-thread processes of ``python -m data_engine.proposals``
  train      a short stage-3 continuation (train/configs/finetune_tiny.yaml) from cached encoder
             outputs; ends with OUT/final/, which carries the starting model's UPN in upn/
  before     ``chatrex eval`` of the starting model on the eval split (OUT/eval_before.json)
  after      ``chatrex eval`` of OUT/final on the same images (OUT/eval_after.json)

It ends with both sets of numbers side by side and the time each step took. Then:

    chatrex detect --model runs/finetune-tiny/final examples/scene1.png boat
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from chatrex.evaluation import PROTOCOL_PER_IMAGE
from chatrex.utils.atomic import atomic_write

# Training runs before both evaluations: the predictor works under torch.inference_mode, and
# chatrex.layers.object_pointer caches small index tensors across calls (functools.lru_cache), which a
# later training step in the same process would then use under autograd and fail on.
STEPS = ("data", "proposals", "train", "before", "after")
CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_tiny.yaml"
IMAGE_SIZE = 384  # the synthetic world's size the bundle was trained at


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.finetune_tiny", description="Fine-tune the bundled chatrex-tiny on fresh synthetic images and evaluate it before and after "
                                "(about five minutes on a 2-core CPU).",
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="chatrex-tiny", help="starting model: a bundled name or a ChatRex folder with upn/ (default chatrex-tiny)")
    p.add_argument("--data", default="data/finetune-tiny", help="folder for the synthetic images and records (default data/finetune-tiny)")
    p.add_argument("--out", default="runs/finetune-tiny", help="training output, OUT/final and the evaluations (default runs/finetune-tiny)")
    p.add_argument("--seed", type=int, default=21, help="synthetic seed of the train split; the eval split uses seed + 1 (default 21: "
                   "not used by any other recipe, so the images are new to the bundle)")
    p.add_argument("--train-images", type=int, default=48, help="train images (default 48)")
    p.add_argument("--eval-images", type=int, default=16, help="eval images (default 16)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps (default 12)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step, 4 answers each (default 8)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate, cosine schedule (default 5e-5; docs/training.md "
                   "has what 1e-4 does)")
    p.add_argument("--tasks", nargs="+", default=["detection", "referring", "region"], choices=sorted(PROTOCOL_PER_IMAGE),
                   help="chatrex eval tasks before and after (default: detection referring region)")
    p.add_argument("--jobs", type=int, default=2, help="processes for rendering and proposals (default 2, one per core here)")
    p.add_argument("--from", dest="from_step", choices=STEPS, help="redo this step and every step after it")
    return p


class Recipe:
    """The five steps over one set of options; ``timings`` records what each step took."""

    def __init__(self, args):
        from .model_loading import init_folder, upn_folder

        self.args = args
        folder = init_folder(args.model)  # ValueError for an unknown name
        if folder is None:
            raise ValueError(f"--model {args.model!r} is a preset with random weights; fine-tune a trained model (a folder or a bundled name)")
        self.upn = upn_folder(args.model)
        if self.upn is None:
            raise ValueError(f"--model {args.model!r} has no upn/ subfolder: its proposal network is needed for the training proposals")
        self.data, self.out = Path(args.data), Path(args.out)
        self.train_dir = self.data / f"train-s{args.seed}-n{args.train_images}"
        self.eval_dir = self.data / f"eval-s{args.seed + 1}-n{args.eval_images}"
        self.train_records = self.train_dir / "records_upn.jsonl"
        self.final = self.out / "final"
        self.logs = self.out / "logs"
        self.timings: dict[str, float | None] = {}
        self.forced = False
        self.shared: SharedProposals | None = None

    # -- bookkeeping ---------------------------------------------------------------------------
    def _run(self, name: str, done: bool) -> bool:
        """True when step ``name`` must run (not done, or forced by --from)."""
        if name == self.args.from_step:
            self.forced = True
        if done and not self.forced:
            print(f"== {name}: done before, skipped", flush=True)
            self.timings[name] = None
            return False
        print(f"== {name}", flush=True)
        return True

    def _timed(self, name: str, fn) -> None:
        start = time.perf_counter()
        fn()
        self.timings[name] = time.perf_counter() - start
        print(f"== {name}: {self.timings[name]:.1f} s", flush=True)

    # -- steps ---------------------------------------------------------------------------------
    def step_data(self) -> None:
        from data_engine.synthetic.generator import write_split

        for split, folder, seed, n in (("train", self.train_dir, self.args.seed, self.args.train_images),
                                       ("test", self.eval_dir, self.args.seed + 1, self.args.eval_images)):
            # write_split renames records.jsonl into place last: its presence means complete.
            if self.forced or not (folder / "records.jsonl").is_file():
                write_split(folder, split, n, seed, size=IMAGE_SIZE, workers=self.args.jobs if n >= 16 else 0, progress=True)
                print(f"wrote {n} {split} images (seed {seed}) to {folder}", flush=True)

    def step_proposals(self) -> None:
        """``python -m data_engine.proposals`` in ``--jobs`` shards of one thread each (the UPN
        predictor is bound by per-image Python work, so processes beat threads on two cores),
        then the shards interleaved back into the order of records.jsonl."""
        jobs = max(1, min(self.args.jobs, self.args.train_images))
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        parts = [self.train_dir / f".records_upn.{i}.jsonl" for i in range(jobs)]
        procs = []
        for i, part in enumerate(parts):
            cmd = [sys.executable, "-m", "data_engine.proposals", str(self.train_dir / "records.jsonl"), "--upn", str(self.upn),
                   "--out", str(part), "--shard", f"{i}/{jobs}"]
            log = open(self.logs / f"proposals.{i}.log", "w")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, cmd))
        print(f"{jobs} x {' '.join(procs[0][2][1:4])} ... (logs in {self.logs})", flush=True)
        failed = []
        for i, (proc, log, cmd) in enumerate(procs):
            if proc.wait() != 0:
                failed.append(i)
            log.close()
        if failed:
            tail = (self.logs / f"proposals.{failed[0]}.log").read_text().splitlines()[-15:]
            raise RuntimeError(f"proposals shard {failed[0]} failed:\n" + "\n".join(tail))
        shards = [part.read_text().splitlines(keepends=True) for part in parts]
        lines = [shards[k % jobs][k // jobs] for k in range(sum(len(s) for s in shards))]
        with atomic_write(self.train_records) as f:
            f.write("".join(lines))
        for part in parts:
            part.unlink()
        print(f"wrote {len(lines)} records with proposals to {self.train_records}", flush=True)

    def _eval_settings(self, model: str) -> dict:
        return {"model": model, "data": str(self.eval_dir), "limit": self.args.eval_images, "tasks": list(self.args.tasks),
                "per_image": {t: PROTOCOL_PER_IMAGE[t] for t in self.args.tasks}, "weights": _weights_stamp(model)}

    def _eval_done(self, path: Path, model: str) -> bool:
        return path.is_file() and json.loads(path.read_text()).get("settings") == self._eval_settings(model)

    def step_eval(self, model: str, path: Path) -> None:
        from chatrex.evaluation.runner import evaluate
        from chatrex.predictor import ChatRexPredictor

        from .model_loading import upn_folder

        predictor = ChatRexPredictor.from_pretrained(model)
        digest = _folder_digest(upn_folder(model))
        if self.shared is None or self.shared.digest != digest:
            self.shared = SharedProposals(predictor.upn, digest)
        predictor.upn = self.shared
        results = {}
        for task in self.args.tasks:
            per_image = PROTOCOL_PER_IMAGE[task]
            print(f"chatrex eval --model {model} --data {self.eval_dir} --task {task} --limit {self.args.eval_images}"
                  + (f" --per-image {per_image}" if per_image else ""), flush=True)
            table = evaluate(model, str(self.eval_dir), task, limit=self.args.eval_images, predictor=predictor, per_image=per_image)
            print(table.format(), flush=True)
            results[task] = table.metrics
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(json.dumps({"settings": self._eval_settings(model), "metrics": results}, indent=2))

    def train_overrides(self) -> list[str]:
        """``--set`` values on top of train/configs/finetune_tiny.yaml."""
        a = self.args
        return [f"model.init={a.model}", f"data.train=[{self.train_records}]", f"train.output_dir={self.out}",
                f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"optim.lr={{default: {a.lr:.6e}}}",
                f"train.seed={a.seed}"]

    def train_config(self):
        from .config import load_config

        return load_config(str(CONFIG), self.train_overrides()).validate()

    def _train_done(self, cfg) -> bool:
        import yaml

        from .config import to_dict

        saved = self.out / "config.yaml"
        return (self.final / "config.json").is_file() and saved.is_file() and yaml.safe_load(saved.read_text()) == to_dict(cfg)

    def step_train(self, cfg) -> None:
        import yaml

        from .config import to_dict
        from .trainer import train

        saved = self.out / "config.yaml"
        # A checkpoint of these very settings is continued; one of other settings is not.
        same = saved.is_file() and yaml.safe_load(saved.read_text()) == to_dict(cfg)
        if not same or self.forced:
            for name in os.listdir(self.out) if self.out.is_dir() else []:
                if name.startswith("checkpoint-") or name in ("final", "metrics.jsonl"):
                    shutil.rmtree(self.out / name) if (self.out / name).is_dir() else (self.out / name).unlink()
        sets = " ".join(f"--set '{o}'" for o in self.train_overrides())
        print(f"python -m train.chatrex --config {os.path.relpath(CONFIG)} {sets}{' --resume' if same else ''}", flush=True)
        result = train(cfg, resume=same and not self.forced)
        print(f"wrote {result.final_dir} (last loss {result.last_loss:.4f})", flush=True)

    # -- the whole recipe ----------------------------------------------------------------------
    def run(self) -> dict:
        a = self.args
        start = time.perf_counter()
        done = (self.train_dir / "records.jsonl").is_file() and (self.eval_dir / "records.jsonl").is_file()
        if self._run("data", done):
            self._timed("data", self.step_data)
        if self._run("proposals", self.train_records.is_file()):
            self._timed("proposals", self.step_proposals)
        cfg = self.train_config()
        if self._run("train", self._train_done(cfg)):
            self._timed("train", lambda: self.step_train(cfg))
        before = self.out / "eval_before.json"
        if self._run("before", self._eval_done(before, a.model)):
            self._timed("before", lambda: self.step_eval(a.model, before))
        after = self.out / "eval_after.json"
        if self._run("after", self._eval_done(after, str(self.final))):
            self._timed("after", lambda: self.step_eval(str(self.final), after))
        total = time.perf_counter() - start
        print()
        print(side_by_side(json.loads(before.read_text())["metrics"], json.loads(after.read_text())["metrics"]))
        print()
        print("step times: " + ", ".join(f"{k} {'skipped' if v is None else f'{v:.1f} s'}" for k, v in self.timings.items())
              + f"; total {total:.1f} s")
        print(f"fine-tuned model: {self.final}\n  .venv/bin/chatrex detect --model {self.final} examples/scene1.png boat")
        return {"timings": self.timings, "total": total}


class SharedProposals:
    """A UPN predictor whose proposals are kept per image and settings, so the evaluation after
    fine-tuning does not compute the eval images' proposals again: ``final/upn`` is a copy of
    the starting model's UPN, and ``digest`` (of the UPN folder's files) is what shows it.
    Passed to ``ChatRexPredictor`` in place of its UPN; the boxes are exactly what the UPN
    computes, so the numbers are those of ``chatrex eval``."""

    def __init__(self, upn, digest: str):
        self.upn, self.digest = upn, digest
        self._kept: dict[tuple, object] = {}

    @property
    def image_config(self):
        return self.upn.image_config

    def predict(self, image, **settings):
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.size, image.mode, tuple(sorted(settings.items())))
        if key not in self._kept:
            self._kept[key] = self.upn.predict(image, **settings)
        return self._kept[key]

    def predict_batch(self, images, **settings):
        # The predictor batches only images of one resized size, whose batched boxes equal
        # predict's; keeping them per image is what matters here, not the batch.
        return [self.predict(image, **settings) for image in images]


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _weights_stamp(model: str) -> str | None:
    """Size and modification time of a folder's weights, so an evaluation of an older
    ``final/`` is not reused after training again (None for a bundled name)."""
    path = Path(model) / "model.safetensors"
    if not path.is_file():
        return None
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def side_by_side(before: dict, after: dict) -> str:
    """Both evaluations as one table: task, metric, before, after, change."""
    rows = [("task", "metric", "before", "after", "change")]
    for task, metrics in before.items():
        for key, value in metrics.items():
            if key in ("images", "seconds") or key not in after.get(task, {}):
                continue
            new = after[task][key]
            if isinstance(value, float):
                rows.append((task, key, f"{value:.3f}", f"{new:.3f}", f"{new - value:+.3f}"))
            else:
                rows.append((task, key, str(value), str(new), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]:>{widths[4]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("train_images", "eval_images", "steps", "batch_size", "jobs"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.seed < 0 or args.lr <= 0:
        print(f"error: --seed must be >= 0 and --lr > 0, got {args.seed} and {args.lr}", file=sys.stderr)
        return 2
    try:
        Recipe(args).run()
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ChatRexDataset``: records -> (image, box list, conversation) samples.

Per-sample randomness (task choice, template, proposal mix, box order) comes from a generator
seeded by ``(seed, epoch, index)``, so a sample is the same whatever worker or process builds
it, and a resumed run sees exactly the data it would have seen.

Bad records (missing or corrupt image, boxes outside the image, answer index beyond the box
list) are skipped: the next record is used instead and the skip is reported with the sample,
so batches never shrink and every process takes the same number of steps. Only
:class:`~train.tasks.BadSample` and I/O errors mean "bad record": any other exception is a bug
(or a malformed JSONL line, :class:`chatrex.utils.jsonl.MalformedJsonlError`) and stops the run.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from PIL import Image

from chatrex.image_processing_chatrex import load_image
from chatrex.text.coordinates import to_coordinate_conversation

from .box_list import build_box_list, record_gt_boxes, record_proposals
from .record_view import is_text_only, outside_crowd, without_crowd
from .tasks import BUILDERS, TASKS, BadSample, order_objects

MAX_SKIP = 100
ANSWER_FORMATS = ("indices", "coordinates")
FIXED_ANSWER_TASKS = ("caption", "grounded_caption", "conversation")
# The stand-in image of an all-text batch: grey, so it normalises to about zero.
BLANK_SIDE, BLANK_COLOUR = 32, (122, 116, 104)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``epoch * N + i`` over a seeded permutation of ``range(N)`` (shuffled per epoch).

    Encoding the epoch in the key lets the dataset seed per-sample randomness without any
    shared state between the sampler, workers and processes.
    """

    def __init__(self, num_records: int, seed: int = 0, shuffle: bool = True):
        self.num_records = num_records
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        # Not named set_epoch on purpose: accelerate resets samplers that have set_epoch to its
        # own iteration counter, which restarts at 0 in a loader made by skip_first_batches.
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_records

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_records) if self.shuffle else np.arange(self.num_records)
        base = self.epoch * self.num_records
        return iter((base + int(i)) for i in order)


class ChatRexDataset(torch.utils.data.Dataset):
    """Training samples over JSONL records.

    Args:
        records: a :class:`JsonlRecords` (or anything indexable returning record dicts).
        task_weights: relative weight per task family (see :data:`train.tasks.TASKS`); tasks a
            record cannot serve are left out for that record.
        seed: base seed of per-sample randomness.
        max_boxes: box-list cap (<= 100).
        use_record_proposals: mix in the record's ``"proposals"`` (pixel xyxy, or dicts with "box").
        proposal_fn: optional ``image -> (P, 4) pixel xyxy`` (e.g. a UPN predictor).
        num_proposals: at most this many proposals per sample (default: fill up to ``max_boxes``).
        dedup_iou: proposals overlapping ground truth (or each other) above this IoU are dropped.
        turns_per_sample: draw this many tasks for the record and join their turns into one
            multi-turn conversation over the same image and box list.
        answer_format: ``"indices"`` (ChatRex) or ``"coordinates"``: the coordinate-output
            baseline (:mod:`chatrex.text.coordinates`). The same samples are drawn, then box
            indices are rewritten as quantised coordinates and the prompt gets no box tokens.
        feature_cache: a :class:`train.feature_cache.FeatureCache` of these records: samples
            then carry the cached encoder outputs instead of the image (the same box lists and
            conversations are drawn).

    Imported records (crowd regions, text-only LLaVA rows, ...) are read through
    :mod:`train.record_view`.

    Items are dicts: ``image`` (RGB PIL; ``None`` with a cache or for a text-only record),
    ``boxes`` (K, 4) pixel xyxy,
    ``conversation``, ``task`` (task names joined by ``+``), ``record_index`` and ``skipped``
    (list of ``(record_index, reason)``); with a cache also ``vision_features`` (N, C_img) and
    ``object_pooled`` (K, C_obj), the rows of the sample's box list.
    """

    def __init__(
        self,
        records,
        task_weights: dict[str, float],
        seed: int = 0,
        max_boxes: int = 100,
        use_record_proposals: bool = True,
        proposal_fn: Callable | None = None,
        num_proposals: int | None = None,
        dedup_iou: float = 0.7,
        turns_per_sample: int = 1,
        answer_format: str = "indices",
        feature_cache=None,
    ):
        unknown = set(task_weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)} in task_weights; known: {TASKS}")
        if not any(w > 0 for w in task_weights.values()):
            raise ValueError(f"task_weights needs at least one positive weight, got {task_weights}")
        if any(w < 0 for w in task_weights.values()):
            raise ValueError(f"task weights must be >= 0, got {task_weights}")
        if not 1 <= max_boxes <= 100:
            raise ValueError(f"max_boxes must be in [1, 100], got {max_boxes}")
        if not 1 <= turns_per_sample <= 32:
            raise ValueError(f"turns_per_sample must be in [1, 32], got {turns_per_sample}")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        if len(records) == 0:
            raise ValueError("the dataset has no records")
        if feature_cache is not None:
            if proposal_fn is not None:
                raise ValueError("a feature cache cannot be combined with on-the-fly proposals (data.upn_model): cache record proposals instead")
            if len(feature_cache) != len(records):
                raise ValueError(f"the feature cache has {len(feature_cache)} records but the dataset {len(records)}")
            if feature_cache.use_proposals != use_record_proposals:
                raise ValueError(f"the feature cache was built with use_proposals={feature_cache.use_proposals}, the dataset asks for {use_record_proposals}")
        self.feature_cache = feature_cache
        self.records = records
        self.task_weights = {k: float(v) for k, v in task_weights.items() if v > 0}
        self.seed = seed
        self.max_boxes = max_boxes
        self.use_record_proposals = use_record_proposals
        self.proposal_fn = proposal_fn
        self.num_proposals = num_proposals
        self.dedup_iou = dedup_iou
        self.turns_per_sample = turns_per_sample
        self.answer_format = answer_format

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.records))
        return self.sample(index, salt=(epoch,))

    def sample(self, index: int, salt: tuple = (0,), within: tuple[int, int] | None = None) -> dict:
        """The sample of record ``index``, its randomness seeded by ``(seed, *salt, record)``.

        A bad record is replaced by the next one in ``within`` (``[start, stop)`` of the
        records, default all of them, wrapping around), so a mixture stays in one dataset.
        """
        start, stop = within if within is not None else (0, len(self.records))
        skipped: list[tuple[int, str]] = []
        for attempt in range(MAX_SKIP):
            current = start + (index - start + attempt) % (stop - start)
            try:
                sample = self.build(current, np.random.default_rng([self.seed, *salt, current]))
            except (BadSample, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
                warnings.warn(f"skipping record {current}: {reason}", stacklevel=3)
                skipped.append((current, reason))
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(f"{MAX_SKIP} consecutive bad records starting at {index}; last: {skipped[-1][1]}")

    def _load_image(self, path) -> Image.Image:
        if not isinstance(path, str) or not path:
            raise BadSample(f"record has no image path ({path!r})")
        try:
            return load_image(path)  # decodes now, so a truncated file fails here, not in the collator
        except (FileNotFoundError, ValueError) as err:  # load_image's ValueError: not a readable image
            raise BadSample(str(err)) from None

    def _proposals(self, record: dict, width: int, height: int, image: Image.Image | None) -> np.ndarray:
        props = record_proposals(record, width, height) if self.use_record_proposals else np.zeros((0, 4))
        if self.proposal_fn is not None:
            extra = np.asarray(self.proposal_fn(image), dtype=np.float64).reshape(-1, 4)
            props = np.concatenate([props, record_proposals({"proposals": extra.tolist()}, width, height)])
        return props

    def build(self, index: int, rng: np.random.Generator) -> dict:
        """One sample from record ``index``; raises :class:`BadSample` (or I/O errors) on bad data."""
        record = self.records[index]
        if not isinstance(record, dict):
            raise BadSample(f"record is a {type(record).__name__}, not an object")
        if is_text_only(record) and self.feature_cache is None:
            return self._text_only(record, index, rng)
        image = None
        if self.feature_cache is not None:
            reason = self.feature_cache.bad_reason(index)
            if reason is not None:
                raise BadSample(reason)
            width, height = self.feature_cache.size(index)
        else:
            image = self._load_image(record.get("image"))
            width, height = image.width, image.height
        view, crowd = without_crowd(record)
        try:
            # Validates (finite, x2 > x1, inside the image) and clips; the cap is applied below.
            gt_boxes = record_gt_boxes(view, width, height)
            crowd_boxes = record_gt_boxes({"regions": [{"box": b} for b in crowd]}, width, height)
        except ValueError as err:
            raise BadSample(f"bad region box: {err}") from None
        all_proposals = self._proposals(record, width, height, image)
        proposals = outside_crowd(all_proposals, crowd_boxes)
        box_list = build_box_list(gt_boxes, proposals, rng, self.max_boxes, self.dedup_iou, self.num_proposals)
        conversation, names = self._draw_turns(view, box_list.gt_to_index, rng)
        boxes = box_list.boxes
        conversation = [dict(t, content=order_objects(t["content"], boxes)) if t["role"] == "assistant" else t for t in conversation]
        if self.answer_format == "coordinates":
            conversation = to_coordinate_conversation(conversation, boxes, width, height)
            boxes = np.zeros((0, 4))
        sample = {"image": image, "boxes": boxes, "conversation": conversation, "task": "+".join(names), "record_index": index}
        if self.feature_cache is not None:
            # The cache rows follow the record as stored: all regions (crowd too), then proposals.
            sample.update(self._cached_features(index, np.concatenate([record_gt_boxes(record, width, height), all_proposals]), boxes))
        return sample

    def _text_only(self, record: dict, index: int, rng: np.random.Generator) -> dict:
        """A conversation without image or boxes (LLaVA's text-only records)."""
        if "conversation" not in self.task_weights:
            raise BadSample(f"record has no image, only conversations, and the task weights {sorted(self.task_weights)} have no 'conversation'")
        conversation = BUILDERS["conversation"](record, [], rng)
        if self.answer_format == "coordinates":
            conversation = to_coordinate_conversation(conversation, np.zeros((0, 4)), 1, 1)
        return {"image": None, "boxes": np.zeros((0, 4)), "conversation": conversation, "task": "conversation", "record_index": index}

    def _cached_features(self, index: int, candidates: np.ndarray, boxes: np.ndarray) -> dict:
        """The cached fused tokens and the pooled rows of ``boxes`` (a subset of the record's
        candidate boxes, which the cache holds in the same order)."""
        fused, pooled = self.feature_cache.get(index)
        if len(pooled) != len(candidates):
            raise RuntimeError(f"feature cache row of record {index} has {len(pooled)} boxes but the record has {len(candidates)} candidates: rebuild the cache")
        row_of = {tuple(b): i for i, b in reversed(list(enumerate(candidates.tolist())))}
        rows = [row_of[tuple(b)] for b in boxes.tolist()]
        return {"vision_features": fused, "object_pooled": pooled[rows]}

    def _draw_turns(self, record: dict, gt_to_index, rng: np.random.Generator) -> tuple[list[dict], list[str]]:
        """``turns_per_sample`` tasks drawn by weight and their turns. Tasks whose answer is fixed
        by the record (caption, grounded caption, conversation) are drawn at most once: repeating
        them would only repeat the same answer. Fewer turns when the record runs out of tasks."""
        tasks = dict(self.task_weights)
        conversation: list[dict] = []
        names: list[str] = []
        for _ in range(self.turns_per_sample):
            drawn = self._draw_task(record, gt_to_index, rng, tasks)
            if drawn is None:
                break
            task, turns = drawn
            conversation.extend(turns)
            names.append(task)
            if task in FIXED_ANSWER_TASKS:
                del tasks[task]
        if not names:
            raise BadSample(f"record supports none of the tasks {sorted(self.task_weights)}")
        return conversation, names

    @staticmethod
    def _draw_task(record: dict, gt_to_index, rng: np.random.Generator, tasks: dict) -> tuple[str, list[dict]] | None:
        """A task drawn by weight among those the record supports (unsupported ones are removed
        from ``tasks``), and its turns; None when none is left."""
        while tasks:
            names = sorted(tasks)
            weights = np.array([tasks[n] for n in names])
            task = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            conversation = BUILDERS[task](record, gt_to_index, rng)
            if conversation is not None:
                return task, conversation
            del tasks[task]
        return None


class ChatRexCollator:
    """Batches samples with :class:`~chatrex.ChatRexProcessor` (labels only on answers).

    The batch carries ``skipped`` (list of ``(record_index, reason)``), which the trainer pops
    before the forward pass. Text-only samples (``image`` None) have no image tokens; with
    ``always_image`` a batch made only of them gives its first sample a blank image, so the
    vision towers run in every step (DeepSpeed needs the same modules on every process).
    """

    def __init__(self, processor, always_image: bool = False):
        self.processor = processor
        self.always_image = always_image

    def __call__(self, samples: list[dict]):
        if samples and "vision_features" in samples[0]:
            # Cached encoder outputs: only the text is processed here.
            encoded = [self.processor.encode_sample(s["conversation"], num_boxes=len(s["boxes"]), has_image=True) for s in samples]
            batch = self.processor.pad([e[0] for e in encoded], [e[1] for e in encoded], "right")
            batch["vision_features"] = torch.stack([s["vision_features"] for s in samples]).float()
            batch["object_pooled"] = [s["object_pooled"].float() for s in samples]
        else:
            images = [s["image"] for s in samples]
            if self.always_image and samples and all(image is None for image in images):
                images[0] = Image.new("RGB", (BLANK_SIDE, BLANK_SIDE), BLANK_COLOUR)
            batch = self.processor(
                images=images,
                conversations=[s["conversation"] for s in samples],
                boxes=[s["boxes"] for s in samples],
            )
        batch["skipped"] = [item for s in samples for item in s["skipped"]]
        return batch

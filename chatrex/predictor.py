"""``ChatRexPredictor``: the user API. It owns the per-image cache.

``set_image`` runs UPN and both vision encoders once; ``ask``, ``detect`` and ``describe``
reuse the cached features (segment-anything's predictor pattern). Boxes in and out are pixel
xyxy in the original image.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import templates
from .answer import GroundedSpan, ParsedAnswer, parse_answer
from .image_processing import ImageMeta, to_rgb_image
from .modeling_chatrex import ChatRexForConditionalGeneration, ChatRexImageFeatures
from .processing_chatrex import ChatRexProcessor

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
UPN_SUBDIR = "upn"
DESCRIBE_LEVELS = tuple(templates.REGION)
# A sanity bound on one answer's length: the longest trained answers (grounded captions of
# crowded scenes) are a few hundred tokens; more is a runaway loop or a typo.
MAX_NEW_TOKENS = 2048
DEFAULT_PROPOSALS = {"prompt_type": "both", "min_score": 0.1, "nms_iou": 0.6}


class InputTooLongError(ValueError):
    """The prompt (question, image and box tokens) does not fit in the model's context."""

    def __init__(self, num_tokens: int, limit: int):
        self.num_tokens, self.limit = num_tokens, limit
        super().__init__(f"the input is too long: the prompt is {num_tokens} tokens (question, image and box tokens) "
                         f"but the model's context is {limit} positions; shorten the question or phrase")


def _check_max_new_tokens(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {value!r}")
    return int(value)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_dtype(device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """Check a device and dtype request; ``dtype=None`` means float32 on a CPU and bfloat16 on a
    GPU. Raises ``ValueError`` (one line) for an unknown value or a GPU this machine lacks."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda[:N], got {str(device)!r}")
    if dtype is None:
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype.removeprefix("torch.")]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return device, dtype


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package (e.g. ``chatrex-tiny``)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled model name, then a local folder, then a Hugging Face hub id (cached, or
    downloaded when the hub is reachable; a released checkpoint converted once): the rules of
    :func:`chatrex.hub.resolve_model`. A local path that does not exist fails at once with one
    line (``ValueError``); it is never sent to the hub."""
    from .hub import resolve_model

    return resolve_model(name_or_path, BUNDLED_DIR)


@dataclass
class Answer:
    """A parsed answer. ``spans`` carry pixel xyxy boxes of the original image.
    ``history_turns``: how many earlier turns of the ``history`` passed to :meth:`ChatRexPredictor.ask`
    were in the prompt (the oldest go first when the context is full)."""

    text: str
    raw: str
    spans: list[GroundedSpan] = field(default_factory=list)
    num_invalid_indices: int = 0
    history_turns: int = 0

    @property
    def boxes(self) -> list[list[float]]:
        return ParsedAnswer(self.text, self.spans).boxes


def _history_turns(history) -> list[tuple[dict, dict]]:
    """``[(user message, assistant message), ...]`` from ``(question, answer)`` pairs."""
    turns = []
    for i, pair in enumerate(history or []):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"history[{i}] must be a (question, answer) pair, got {pair!r}")
        question, answer = pair
        answer = answer.raw if isinstance(answer, Answer) else answer
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError(f"history[{i}]: question and answer must be strings (or an Answer), got {pair!r}")
        turns.append(({"role": "user", "content": question}, {"role": "assistant", "content": answer}))
    return turns


@dataclass
class _Prompt:
    input_ids: torch.Tensor  # (1, L)
    max_new_tokens: int  # the budget, cut so that prompt and answer fit in the context
    history_turns: int  # earlier turns kept in the prompt
    cache: _Cache  # the image it is about, held so a stream stays on it whatever set_image does meanwhile


class _TokenQueue(BaseStreamer):
    """Hands each generated token id from the generating thread to the reader; ``None`` marks
    the end. ``generate`` passes the prompt first, which is skipped."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.queue.put(value.reshape(-1).tolist())
        self._prompt_seen = True

    def end(self):
        self.queue.put(None)


class _StopWhenSet(StoppingCriteria):
    """Ends generation early once ``event`` is set (the reader of a stream went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class Detection:
    """Boxes (pixel xyxy, original image) the model retrieved for ``phrase``, with their
    proposal indices and proposal scores; ``answer`` is the raw answer and ``prompt`` the
    question the model was asked (together, a turn for :meth:`ChatRexPredictor.ask`'s history)."""

    phrase: str
    boxes: list[list[float]]
    indices: list[int]
    scores: list[float]
    answer: str
    prompt: str = ""


@dataclass
class _Cache:
    meta: ImageMeta
    features: ChatRexImageFeatures
    boxes: torch.Tensor  # (K, 4) pixel xyxy
    scores: torch.Tensor  # (K,)
    granularity: list[str]
    object_features: list[torch.Tensor]


class ChatRexPredictor:
    """Grounded chat about one image at a time.

    Args:
        model: a ChatRex model (eval mode is set here).
        processor: its processor.
        upn: a ``upn.UPNPredictor`` for proposals; without one, pass boxes to :meth:`set_image`.
        proposal_min_score, proposal_nms_iou: UPN post-processing for ``set_image``. Unset, they
            come from the processor's ``proposals`` settings, else (0.1, 0.6), which keep
            recall@100 of upn-tiny at 0.95 fine / 0.99 coarse with about 57 boxes per synthetic
            image (at 0.3 / 0.8: 0.84 / 0.93). The released models' protocol is the fine prompt,
            score >= 0.3, NMS 0.8, the top 100 by score (set by ``chatrex convert official``).
        max_new_tokens: generation budget per answer, at most :data:`MAX_NEW_TOKENS`; an answer
            never runs past the model's context (``context_length``).
        cache_size: how many encoded images to keep; ``set_image`` on an image seen recently
            (same pixels, same boxes) reuses its encoding instead of running UPN and the
            encoders again.
    """

    def __init__(self, model: ChatRexForConditionalGeneration, processor: ChatRexProcessor, upn=None, device: str | torch.device = "cpu",
                 proposal_min_score: float | None = None, proposal_nms_iou: float | None = None, max_new_tokens: int = 256, cache_size: int = 4):
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.upn = upn
        settings = {**DEFAULT_PROPOSALS, **(processor.proposals or {})}
        self.proposal_prompt_type = settings["prompt_type"]
        self.proposal_min_score = float(settings["min_score"] if proposal_min_score is None else proposal_min_score)
        self.proposal_nms_iou = float(settings["nms_iou"] if proposal_nms_iou is None else proposal_nms_iou)
        self.max_new_tokens = _check_max_new_tokens(max_new_tokens)
        self.cache_size = cache_size
        self.stop_token_ids = self._stop_token_ids()
        self._cache: _Cache | None = None
        self._recent: OrderedDict[str, _Cache] = OrderedDict()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "chatrex-tiny", upn: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        torch_dtype: str | torch.dtype | None = None, **kwargs) -> "ChatRexPredictor":
        """Load a bundled model by name (``"chatrex-tiny"``) or a local folder. The UPN comes from
        ``upn`` or, if absent, from the folder's ``upn/`` subfolder when there is one.

        ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``torch_dtype``: float32, bfloat16 or
        float16 (default: float32 on a CPU, bfloat16 on a GPU). The weights are read straight
        into that dtype on that device (one copy in memory). ROI features stay float32 up to
        the object projector whatever the dtype, as in the official code.

        A folder in the released models' own layout (RexSeek-3B, ChatRex-7B) is recognised and
        converted in memory (:mod:`chatrex.official.convert`); ``chatrex convert official``
        writes the converted folder once instead."""
        device, dtype = resolve_device_dtype(device, torch_dtype)
        path = resolve_model_path(name_or_path)
        from .official.convert import is_official_folder, load_official

        if is_official_folder(path):
            model, processor = load_official(path, dtype=dtype, device=device)
        else:
            # Bundled weights are stored in fp16 to keep the repository small; CPUs want fp32.
            # device_map places each tensor on the GPU as it is read instead of loading on the CPU first.
            model = ChatRexForConditionalGeneration.from_pretrained(path, dtype=dtype, **({"device_map": str(device)} if device.type != "cpu" else {}))
            processor = ChatRexProcessor.from_pretrained(path)
        upn_path = Path(upn) if upn is not None else path / UPN_SUBDIR
        upn_predictor = None
        if upn is not None or (upn_path / "config.json").is_file():
            from upn import UPNPredictor

            upn_predictor = UPNPredictor.from_pretrained(upn_path, device=device)
        return cls(model, processor, upn_predictor, device=device, **kwargs)

    # -- image -----------------------------------------------------------------------------
    def set_image(self, image, boxes=None) -> int:
        """Encode ``image`` once and propose boxes (or use ``boxes``, pixel xyxy (K, 4), K <= 100).

        Returns the number of boxes the model can refer to.
        """
        rgb = to_rgb_image(image)
        key = self._cache_key(rgb, boxes)
        if key in self._recent:
            self._recent.move_to_end(key)
            self._cache = self._recent[key]
            return len(self._cache.boxes)
        ip = self.processor.image_processor
        meta = ip.image_meta(rgb.width, rgb.height)
        if boxes is None:
            props = self.propose(rgb)
            pixel_boxes, scores, granularity = props.boxes.float(), props.scores.float(), list(props.granularity)
        else:
            pixel_boxes = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).float()
            scores, granularity = torch.ones(len(pixel_boxes)), ["given"] * len(pixel_boxes)
        normalized = ip.normalize_boxes(pixel_boxes.numpy(), meta)  # validates and clips
        low, high, _ = ip.preprocess(rgb)
        with torch.inference_mode():
            features = self.model.get_image_features(low[None].to(self.device), high[None].to(self.device))
            objects = self.model.get_object_features(features.high_res_features, [normalized.to(self.device)])
        self._cache = _Cache(meta, features, ip.denormalize_boxes(normalized, meta), scores, granularity, objects)
        self._recent[key] = self._cache
        while len(self._recent) > self.cache_size:
            self._recent.popitem(last=False)
        return len(pixel_boxes)

    @staticmethod
    def _cache_key(rgb, boxes) -> str:
        digest = hashlib.sha1(rgb.tobytes())
        digest.update(repr(rgb.size).encode())
        if boxes is None:
            digest.update(b"upn")
        else:
            arr = np.asarray(boxes, dtype=np.float64)
            digest.update(b"boxes" + repr(arr.shape).encode() + arr.tobytes())
        return digest.hexdigest()

    def propose(self, image, prompt_type: str | None = None, min_score: float | None = None):
        """UPN proposals with this predictor's settings (prompt, score threshold, NMS, the top
        ``max_objects`` by score): by default exactly the box list ``set_image`` builds.

        Returns ``upn.Proposals`` (pixel xyxy boxes, scores, granularity), sorted by score.
        """
        if self.upn is None:
            raise RuntimeError("no proposal network loaded: pass boxes=... to set_image or load a UPN")
        return self.upn.predict(
            to_rgb_image(image),
            prompt_type=self.proposal_prompt_type if prompt_type is None else prompt_type,
            min_score=self.proposal_min_score if min_score is None else float(min_score),
            nms_iou=self.proposal_nms_iou,
            max_boxes=self.processor.image_processor.max_objects,
        )

    @property
    def boxes(self) -> torch.Tensor:
        """(K, 4) pixel xyxy boxes of the current image, in index order."""
        return self._require().boxes

    @property
    def scores(self) -> torch.Tensor:
        return self._require().scores

    @property
    def granularity(self) -> list[str]:
        return self._require().granularity

    def _stop_token_ids(self) -> list[int]:
        """Generation stops at the tokenizer's end-of-sequence token and at the ChatML end-of-turn
        and end-of-text tokens when the vocabulary has them (RexSeek's stop words). Computed
        once: reading a 150k-token vocabulary per answer would cost more than a decoding step."""
        tok = self.processor.tokenizer
        vocab = tok.get_vocab()
        rows = self.model.get_output_embeddings().weight.shape[0]
        ids = [tok.eos_token_id] + [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
        return [i for i in dict.fromkeys(ids) if i is not None and i < rows]

    def _require(self) -> _Cache:
        if self._cache is None:
            raise RuntimeError("call set_image(image) first")
        return self._cache

    # -- generation ------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions the LLM can attend over: prompt plus answer (1,024 for chatrex-tiny)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def _prompt(self, question: str, num_boxes: int | None = None, max_new_tokens: int | None = None, history=None) -> _Prompt:
        cache = self._require()
        budget = _check_max_new_tokens(self.max_new_tokens if max_new_tokens is None else max_new_tokens)
        k = num_boxes if num_boxes is not None else len(cache.boxes)
        turns = _history_turns(history)
        while True:
            messages = [m for pair in turns for m in pair] + [{"role": "user", "content": question}]
            ids, _ = self.processor.encode_sample(messages, num_boxes=k, has_image=True, add_generation_prompt=True)
            # Leave room for an answer; the oldest turns go first when the context is full.
            if not turns or len(ids) + min(budget, 64) < self.context_length:
                break
            turns = turns[1:]
        if len(ids) >= self.context_length:
            raise InputTooLongError(len(ids), self.context_length)
        return _Prompt(torch.tensor([ids], device=self.device), min(budget, self.context_length - len(ids)), len(turns), cache)

    def _run(self, prompt: _Prompt, object_features=None, **generate_kwargs) -> str:
        """Greedy decoding of ``prompt``; returns the raw answer (ChatRex markup kept)."""
        cache = prompt.cache
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=prompt.input_ids,
                attention_mask=torch.ones_like(prompt.input_ids),
                image_features=cache.features,
                object_features=object_features if object_features is not None else cache.object_features,
                max_new_tokens=prompt.max_new_tokens,
                do_sample=False,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                eos_token_id=self.stop_token_ids,
                **generate_kwargs,
            )
        return self.processor.decode(out[0, prompt.input_ids.shape[1]:])

    def _generate(self, question: str, object_features=None, num_boxes: int | None = None, max_new_tokens: int | None = None,
                  history=None) -> str:
        return self._run(self._prompt(question, num_boxes, max_new_tokens, history), object_features)

    @property
    def prompts(self) -> templates.PromptSet:
        """The task prompts and answer rules of this model's family."""
        return self.processor.prompts

    def _parse(self, raw: str, boxes) -> ParsedAnswer:
        return parse_answer(raw, boxes, rules=self.prompts.answer_rules)

    def _question(self, question: str, grounded: bool) -> str:
        if not question or not question.strip():
            raise ValueError("question is empty")
        return (self.prompts.grounded_prefix if grounded else "") + question.strip()

    def _answer(self, raw: str, prompt: _Prompt) -> Answer:
        parsed = self._parse(raw, prompt.cache.boxes.tolist())
        return Answer(parsed.text, raw, parsed.spans, parsed.num_invalid_indices, prompt.history_turns)

    def ask(self, question: str, max_new_tokens: int | None = None, grounded: bool = False, history=None) -> Answer:
        """Free-form question about the current image; grounded phrases come back with boxes.
        ``grounded=True`` asks for a grounded answer in the words the model was trained with
        (the released models' "Answer the question in grounded format."; our models ground
        whenever they name an object).

        ``history``: earlier turns about the same image, oldest first, as ``(question,
        answer)`` pairs (an :class:`Answer` or its raw text with the ``<objN>`` markup). They go
        into the prompt in the chat template's multi-turn format, so a follow-up ("and what
        colour is it?") can refer to them; their box indices stay valid because the image and
        its box list are the same. When the prompt would not leave room for an answer, the
        oldest turns are dropped first (:attr:`Answer.history_turns` says how many stayed).

        Raises :class:`InputTooLongError` (a ``ValueError``) when the question does not fit in
        the model's context."""
        prompt = self._prompt(self._question(question, grounded), max_new_tokens=max_new_tokens, history=history)
        return self._answer(self._run(prompt), prompt)

    def ask_stream(self, question: str, max_new_tokens: int | None = None, grounded: bool = False, history=None) -> Iterator[Answer]:
        """:meth:`ask`, answered as it is generated: yields the answer so far, parsed, after each
        new token (a grounded phrase gets its boxes once its ``<objects>`` list is closed). The
        last item is the complete answer, equal to what :meth:`ask` returns (same greedy
        decoding, same tokens).

        Generation runs in a background thread; closing the iterator early stops it after the
        current token. Errors (an empty or too long question, a bad history) are raised by the
        first ``next()``."""
        prompt = self._prompt(self._question(question, grounded), max_new_tokens=max_new_tokens, history=history)
        tokens, stop, result = _TokenQueue(), threading.Event(), {}

        def generate():
            try:
                result["raw"] = self._run(prompt, streamer=tokens, stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]))
            except BaseException as err:  # handed to the reader, which raises it
                result["error"] = err
                tokens.end()

        thread = threading.Thread(target=generate, name="chatrex-ask-stream", daemon=True)
        thread.start()
        ids: list[int] = []
        try:
            for new in iter(tokens.queue.get, None):
                ids += new
                text = self.processor.decode(ids)
                # U+FFFD: the token ends inside a multi-byte character; wait for the rest.
                if text and not text.endswith("\ufffd"):
                    yield self._answer(text, prompt)
        finally:
            stop.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        yield self._answer(result["raw"], prompt)

    def grounded_caption(self, max_new_tokens: int | None = 512) -> Answer:
        """Describe the current image and ground every object the description names."""
        return self.ask(self.prompts.grounded_caption, max_new_tokens=max_new_tokens)

    def detect(self, phrase: str, kind: str = "auto") -> Detection:
        """Boxes of every object matching ``phrase`` (a category, short phrase or referring
        expression). ``kind`` picks the prompt family; ``"auto"``: one word -> category,
        starting with "the" -> referring, else phrase."""
        phrase = (phrase or "").strip()
        if not phrase:
            raise ValueError("phrase is empty")
        if kind == "auto":
            kind = "category" if len(phrase.split()) == 1 else "referring" if phrase.lower().startswith("the ") else "phrase"
        if kind not in self.prompts.detection:
            raise ValueError(f"kind must be 'auto' or one of {sorted(self.prompts.detection)}, got {kind!r}")
        question = self.prompts.detection[kind].format(phrase=phrase)
        raw = self._generate(question)
        cache = self._require()
        parsed = self._parse(raw, cache.boxes.tolist())
        indices = parsed.indices
        return Detection(phrase, [cache.boxes[i].tolist() for i in indices], indices, [float(cache.scores[i]) for i in indices], raw, question)

    def describe(self, box_or_index, level: str = "category") -> str:
        """Describe one region: an index into :attr:`boxes`, or a pixel xyxy box (added to the
        box list for this question). ``level``: category, phrase, description or referring."""
        if level not in DESCRIBE_LEVELS:
            raise ValueError(f"level must be one of {DESCRIBE_LEVELS}, got {level!r}")
        cache = self._require()
        if isinstance(box_or_index, (int, np.integer)):
            index = int(box_or_index)
            if not 0 <= index < len(cache.boxes):
                raise ValueError(f"box index {index} out of range: the image has {len(cache.boxes)} boxes")
            objects, k = None, None
        else:
            box = torch.as_tensor(np.asarray(box_or_index, dtype=np.float64).reshape(1, 4)).float()
            ip = self.processor.image_processor
            normalized = ip.normalize_boxes(box.numpy(), cache.meta)
            same = box_iou(box, cache.boxes).flatten() if len(cache.boxes) else torch.zeros(0)
            if len(same) and float(same.max()) > 0.95:
                index, objects, k = int(same.argmax()), None, None
            else:
                if len(cache.boxes) >= ip.max_objects:
                    raise ValueError(f"the image already has {len(cache.boxes)} boxes; describe one by index")
                with torch.inference_mode():
                    extra = self.model.get_object_features(cache.features.high_res_features, [normalized.to(self.device)])[0]
                objects = [torch.cat([cache.object_features[0], extra])]
                index, k = len(cache.boxes), len(cache.boxes) + 1
        question = self.prompts.region[level].format(obj=f"<obj{index}>")
        return self._parse(self._generate(question, objects, k), None).text.strip()

"""``ChatRexPredictor``: the user API. It owns the per-image cache.

``set_image`` runs UPN and both vision encoders once; ``ask``, ``detect`` and ``describe``
reuse the cached features (segment-anything's predictor pattern). Boxes in and out are pixel
xyxy in the original image.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from transformers import StoppingCriteriaList

from upn.image_processing import to_rgb_image

from .image_cache import EncodedImage, ImageCache, encode_images
from .modeling_chatrex import ChatRexForConditionalGeneration, ChatRexImageFeatures
from .processing_chatrex import ChatRexProcessor
from .prompt_cache import (
    PromptPrefix,
    continuation_inputs,
    encode_prefix,
    generated_rows,
    left_padded_inputs,
    prefix_length,
)
from .results import Detection, history_messages
from .streaming import StopWhenSet, TokenQueue
from .text import prompts as prompt_templates
from .text.answer import Answer, parse_answer
from .text.markup import format_object
from .utils.devices import resolve_device_dtype

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
UPN_SUBDIR = "upn"
DESCRIBE_LEVELS = tuple(prompt_templates.REGION)
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


def _check_batch_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def _per_item(value, n: int, name: str) -> list:
    """One ``value`` for each of ``n`` items: a string repeated, or a list of exactly ``n``."""
    if isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{n} items but {len(value)} values of {name}")
    return value


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
class _Prompt:
    input_ids: torch.Tensor  # (1, L)
    max_new_tokens: int  # the budget, cut so that prompt and answer fit in the context
    history_turns: int  # earlier turns kept in the prompt
    cache: EncodedImage  # the image it is about, held so a stream stays on it whatever set_image does meanwhile


class ChatRexPredictor:
    """Grounded chat about one image at a time.

    Args:
        model: a ChatRex model (eval mode is set here).
        processor: its processor.
        upn: a ``upn.UPNPredictor`` for proposals (or an object with its ``predict_batch`` and
            ``image_config``); without one, pass boxes to :meth:`set_image`.
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
        share_prefix: compute the LLM's KV cache of an image's system, image and box tokens at
            its first question and continue every later question from it (the default).
            ``False`` runs each prompt in full, as before; answers are the same either way.
    """

    def __init__(self, model: ChatRexForConditionalGeneration, processor: ChatRexProcessor, upn=None, device: str | torch.device = "cpu",
                 proposal_min_score: float | None = None, proposal_nms_iou: float | None = None, max_new_tokens: int = 256, cache_size: int = 4,
                 share_prefix: bool = True):
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
        self.share_prefix = bool(share_prefix)
        self.stop_token_ids = self._stop_token_ids()
        self._cache: EncodedImage | None = None
        self._recent = ImageCache(cache_size)

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
        converted in memory (:mod:`chatrex.convert.official`); ``chatrex convert official``
        writes the converted folder once instead."""
        device, dtype = resolve_device_dtype(device, torch_dtype)
        path = resolve_model_path(name_or_path)
        # Reads config.json only; the converter (CLIP/LLM builders) is imported for released folders alone.
        from .official.layout import is_official_folder

        if is_official_folder(path):
            from .convert.official import load_official

            model, processor = load_official(path, dtype=dtype, device=device)
        else:
            # Bundled weights are stored in fp16 to keep the repository small; CPUs want fp32.
            # device_map places each tensor on the GPU as it is read instead of loading on the CPU first.
            model = ChatRexForConditionalGeneration.from_pretrained(path, dtype=dtype, **({"device_map": str(device)} if device.type != "cpu" else {}))
            processor = ChatRexProcessor.from_pretrained(path)
        upn_path = Path(upn) if upn is not None else path / UPN_SUBDIR
        upn_predictor = None
        if upn is not None or (upn_path / "config.json").is_file():
            from .convert.upn import load_upn_predictor  # a folder, a bundled name or an official .pth

            upn_predictor = load_upn_predictor(upn_path, device=device)
        return cls(model, processor, upn_predictor, device=device, **kwargs)

    # -- image -----------------------------------------------------------------------------
    def set_image(self, image, boxes=None) -> int:
        """Encode ``image`` once and propose boxes (or use ``boxes``, pixel xyxy (K, 4), K <= 100).

        Returns the number of boxes the model can refer to.
        """
        self._cache = self._encode([image], None if boxes is None else [boxes])[0]
        return len(self._cache.boxes)

    def _encode(self, images: list, boxes: list | None = None) -> list[EncodedImage]:
        """Encode several images at once (one UPN batch, one batch through both encoders);
        images seen recently (same pixels, same boxes) come from the cache."""
        return self._recent.get(images, boxes, lambda rgbs, bxs: encode_images(self.model, self.processor.image_processor, self._propose_batch,
                                                                               rgbs, bxs, self.device))

    def propose(self, image, prompt_type: str | None = None, min_score: float | None = None):
        """UPN proposals with this predictor's settings (prompt, score threshold, NMS, the top
        ``max_objects`` by score): by default exactly the box list ``set_image`` builds.

        Returns ``upn.Proposals`` (pixel xyxy boxes, scores, granularity), sorted by score.
        """
        return self._propose_batch([image], prompt_type, min_score)[0]

    def _propose_batch(self, images: list, prompt_type: str | None = None, min_score: float | None = None) -> list:
        """UPN proposals for several images: one forward pass per group of images that UPN
        resizes to the same size. Padding an image to another's size would change its boxes
        (UPN's convolutions and GroupNorm see the padded area; docs/upn.md), so a batch holds
        one size only and every image gets the boxes it gets alone."""
        if self.upn is None:
            raise RuntimeError("no proposal network loaded: pass boxes=... to set_image or load a UPN")
        from upn.image_processing import resized_size

        rgbs, cfg = [to_rgb_image(im) for im in images], self.upn.image_config
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            groups.setdefault(resized_size(rgb.width, rgb.height, cfg.short_side, cfg.max_size, cfg.size_rounding), []).append(i)
        out: list = [None] * len(rgbs)
        for indices in groups.values():
            found = self.upn.predict_batch(
                [rgbs[i] for i in indices],
                prompt_type=self.proposal_prompt_type if prompt_type is None else prompt_type,
                min_score=self.proposal_min_score if min_score is None else float(min_score),
                nms_iou=self.proposal_nms_iou,
                max_boxes=self.processor.image_processor.max_objects,
            )
            for i, props in zip(indices, found):
                out[i] = props
        return out

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

    def _require(self) -> EncodedImage:
        if self._cache is None:
            raise RuntimeError("call set_image(image) first")
        return self._cache

    # -- generation ------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """Positions the LLM can attend over: prompt plus answer (1,024 for chatrex-tiny)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def _prompt(self, question: str, num_boxes: int | None = None, max_new_tokens: int | None = None, history=None,
                cache: EncodedImage | None = None) -> _Prompt:
        cache = self._require() if cache is None else cache
        budget = _check_max_new_tokens(self.max_new_tokens if max_new_tokens is None else max_new_tokens)
        k = num_boxes if num_boxes is not None else len(cache.boxes)
        turns = history_messages(history)
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
        return self._run_batch([prompt], object_features, **generate_kwargs)[0]

    def _prefix(self, cache: EncodedImage, ids: list[int]) -> PromptPrefix:
        key = tuple(ids)
        if key not in cache.prefixes:
            if len(cache.prefixes) >= 4:  # a few layouts per image at most; keep the newest
                cache.prefixes.pop(next(iter(cache.prefixes)))
            cache.prefixes[key] = encode_prefix(self.model, ids, cache.features, cache.object_features, self.device)
        return cache.prefixes[key]

    def _shared_prefix(self, prompts: list[_Prompt]) -> int:
        """The length of the image prefix all ``prompts`` share (0 when they do not: other
        images, other box counts, or no image)."""
        if len({id(p.cache) for p in prompts}) != 1:
            return 0
        cfg = self.model.config
        ids = [p.input_ids[0].tolist() for p in prompts]
        cut = prefix_length(ids[0], (cfg.image_token_id, cfg.objfeat_token_id))
        same = all(len(x) > cut and x[:cut] == ids[0][:cut] for x in ids)
        return cut if same else 0

    def _run_chunks(self, prompts: list[_Prompt], batch_size: int) -> list[str]:
        """:meth:`_run_batch` over ``prompts``, ``batch_size`` at a time; the raw answers, in order."""
        return [raw for start in range(0, len(prompts), batch_size) for raw in self._run_batch(prompts[start : start + batch_size])]

    def _run_batch(self, prompts: list[_Prompt], object_features=None, **generate_kwargs) -> list[str]:
        """Greedy decoding of several prompts in one ``generate`` call; the raw answers, in order.

        Prompts about one image continue from its cached prefix (the image and box tokens run
        once per image, not once per question); prompts about different images, or with
        ``object_features`` other than the image's own box list, run in full, left-padded.
        """
        pad = self.processor.tokenizer.pad_token_id
        cut = self._shared_prefix(prompts) if object_features is None and self.share_prefix else 0
        if cut:
            ids = prompts[0].input_ids[0, :cut].tolist()
            inputs = continuation_inputs(self._prefix(prompts[0].cache, ids), [p.input_ids[0, cut:].tolist() for p in prompts], pad)
        else:
            inputs = left_padded_inputs([p.input_ids[0].tolist() for p in prompts], pad, self.device)
            if object_features is None:
                object_features = [f for p in prompts for f in p.cache.object_features]
            embeds = torch.cat([p.cache.features.image_embeds for p in prompts])
            inputs |= {"image_features": ChatRexImageFeatures(image_embeds=embeds), "object_features": object_features}
        budgets = [p.max_new_tokens for p in prompts]
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max(budgets), do_sample=False, pad_token_id=pad,
                                      eos_token_id=self.stop_token_ids, **generate_kwargs)
        rows = generated_rows(out, inputs["input_ids"].shape[1], budgets, self.stop_token_ids)
        return [self.processor.decode(row) for row in rows]

    def _generate(self, question: str, object_features=None, num_boxes: int | None = None, max_new_tokens: int | None = None,
                  history=None) -> str:
        return self._run(self._prompt(question, num_boxes, max_new_tokens, history), object_features)

    @property
    def prompts(self) -> prompt_templates.PromptSet:
        """The task prompts and answer rules of this model's family."""
        return self.processor.prompts

    def _parse(self, raw: str, boxes) -> Answer:
        return parse_answer(raw, boxes, rules=self.prompts.answer_rules)

    def _question(self, question: str, grounded: bool) -> str:
        if not question or not question.strip():
            raise ValueError("question is empty")
        return (self.prompts.grounded_prefix if grounded else "") + question.strip()

    def _answer(self, raw: str, prompt: _Prompt) -> Answer:
        answer = self._parse(raw, prompt.cache.boxes.tolist())
        answer.history_turns = prompt.history_turns
        return answer

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

    def ask_batch(self, questions: list[str], max_new_tokens: int | None = None, grounded: bool = False, batch_size: int = 8) -> list[Answer]:
        """:meth:`ask` for several questions about the current image (no history), generated
        ``batch_size`` at a time over the image's shared prefix; equal to asking one at a time."""
        _check_batch_size(batch_size)
        prompts = [self._prompt(self._question(q, grounded), max_new_tokens=max_new_tokens) for q in questions]
        raws = self._run_chunks(prompts, batch_size)
        return [self._answer(raw, prompt) for raw, prompt in zip(raws, prompts)]

    def ask_stream(self, question: str, max_new_tokens: int | None = None, grounded: bool = False, history=None) -> Iterator[Answer]:
        """:meth:`ask`, answered as it is generated: yields the answer so far, parsed, after each
        new token (a grounded phrase gets its boxes once its ``<objects>`` list is closed). The
        last item is the complete answer, equal to what :meth:`ask` returns (same greedy
        decoding, same tokens).

        Generation runs in a background thread; closing the iterator early stops it after the
        current token. Errors (an empty or too long question, a bad history) are raised by the
        first ``next()``."""
        prompt = self._prompt(self._question(question, grounded), max_new_tokens=max_new_tokens, history=history)
        tokens, stop, result = TokenQueue(), threading.Event(), {}

        def generate():
            try:
                result["raw"] = self._run(prompt, streamer=tokens, stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]))
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
        return self.detect_batch([phrase], kind)[0]

    def detect_batch(self, phrases: list[str], kind: str | list[str] = "auto", batch_size: int = 8) -> list[Detection]:
        """:meth:`detect` for several phrases about the current image, ``batch_size`` questions
        per ``generate`` call over the image's shared prefix. ``kind``: one for all phrases, or
        one per phrase. The answers equal those of :meth:`detect` one phrase at a time (greedy
        decoding, same tokens)."""
        cache = self._require()
        return self._detect_on([cache] * len(phrases), list(phrases), kind, batch_size)

    def detect_images(self, images: list, phrases: str | list[str], kind: str | list[str] = "auto", batch_size: int = 8) -> list[Detection]:
        """:meth:`detect` over many images: ``phrases[i]`` on ``images[i]`` (or one phrase on
        every image). Each group of ``batch_size`` images goes through the proposal network
        and both encoders as one batch, and their questions are generated together, each with
        its own image's box list. Results equal ``set_image`` then ``detect`` image by image.
        The current image (:meth:`set_image`) stays as it was."""
        images = list(images)
        phrases = [phrases] * len(images) if isinstance(phrases, str) else list(phrases)
        if len(phrases) != len(images):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrases")
        _check_batch_size(batch_size)
        kinds = _per_item(kind, len(phrases), "kind")
        for p, k in zip(phrases, kinds):  # every phrase checked before any work
            self._detection_question(p, k)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            out += self._detect_on(self._encode(images[chunk]), phrases[chunk], kinds[chunk], batch_size)
        return out

    def ask_images(self, images: list, question: str, max_new_tokens: int | None = None, grounded: bool = False, batch_size: int = 8) -> list[Answer]:
        """:meth:`ask` one question about each of many images (e.g. a caption for each), with
        the proposal network, both encoders and generation batched ``batch_size`` images at a
        time. Equal to ``set_image`` then ``ask`` image by image; the current image stays."""
        _check_batch_size(batch_size)
        question = self._question(question, grounded)
        images, out = list(images), []
        for start in range(0, len(images), batch_size):
            prompts = [self._prompt(question, max_new_tokens=max_new_tokens, cache=c) for c in self._encode(images[start : start + batch_size])]
            out += [self._answer(raw, prompt) for raw, prompt in zip(self._run_batch(prompts), prompts)]
        return out

    def _detection_question(self, phrase: str, kind: str) -> tuple[str, str]:
        """``(phrase, question)``: the stripped phrase and the prompt asking for it."""
        phrase = (phrase or "").strip() if isinstance(phrase, str) or phrase is None else phrase
        if not isinstance(phrase, str):
            raise ValueError(f"a phrase must be a string, got {phrase!r}")
        if not phrase:
            raise ValueError("phrase is empty")
        if kind == "auto":
            kind = "category" if len(phrase.split()) == 1 else "referring" if phrase.lower().startswith("the ") else "phrase"
        if kind not in self.prompts.detection:
            raise ValueError(f"kind must be 'auto' or one of {sorted(self.prompts.detection)}, got {kind!r}")
        return phrase, self.prompts.detection[kind].format(phrase=phrase)

    def _detect_on(self, caches: list[EncodedImage], phrases: list[str], kind: str | list[str], batch_size: int) -> list[Detection]:
        _check_batch_size(batch_size)
        questions = [self._detection_question(p, k) for p, k in zip(phrases, _per_item(kind, len(phrases), "kind"))]
        prompts = [self._prompt(q, cache=c) for c, (_, q) in zip(caches, questions)]
        raws = self._run_chunks(prompts, batch_size)
        out = []
        for cache, (phrase, question), raw in zip(caches, questions, raws):
            indices = self._parse(raw, cache.boxes.tolist()).indices
            out.append(Detection(phrase, [cache.boxes[i].tolist() for i in indices], indices, [float(cache.scores[i]) for i in indices], raw, question))
        return out

    def describe_batch(self, indices: list[int], level: str | list[str] = "category", batch_size: int = 8) -> list[str]:
        """:meth:`describe` for several boxes of the current image, by index into :attr:`boxes`,
        ``batch_size`` questions per ``generate`` call over the image's shared prefix; equal to
        describing them one at a time. ``level``: one for all, or one per index."""
        _check_batch_size(batch_size)
        cache = self._require()
        levels = _per_item(level, len(indices), "level")
        questions = []
        for index, lvl in zip(indices, levels):
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(cache.boxes):
                raise ValueError(f"box index {index!r} out of range: the image has {len(cache.boxes)} boxes")
            if lvl not in DESCRIBE_LEVELS:
                raise ValueError(f"level must be one of {DESCRIBE_LEVELS}, got {lvl!r}")
            questions.append(self.prompts.region[lvl].format(obj=format_object(int(index))))
        prompts = [self._prompt(q) for q in questions]
        raws = self._run_chunks(prompts, batch_size)
        return [self._parse(raw, None).text.strip() for raw in raws]

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
        question = self.prompts.region[level].format(obj=format_object(index))
        return self._parse(self._generate(question, objects, k), None).text.strip()

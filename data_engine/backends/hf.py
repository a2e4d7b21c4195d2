"""Data-engine backends built on Hugging Face ``transformers`` (v5) auto classes.

Every backend takes ``model`` (a local folder or hub id, passed to ``from_pretrained``) and
``device``, and reports ``provenance() -> {"backend": "hf", "model": model, "task": ...}``.
Images are ``PIL.Image`` (converted to RGB); boxes are absolute pixel ``(x1, y1, x2, y2)`` in the
image passed in, with ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Sequence

import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    AutoTokenizer,
)

from chatrex.utils.boxes import check_box
from upn.image_processing import to_rgb_image

from .base import Box, GroundedBox, RegionText
from .rules import singular

_OWL_TYPES = {"owlv2", "owlvit"}
_GDINO_TYPES = {"grounding-dino", "mm-grounding-dino"}
_ARTICLES = {"a", "an", "the"}


def _rgb(image: Image.Image, name: str = "image") -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name} must be a PIL.Image.Image, got {type(image).__name__}")
    # The models' own conversion: transparency on white, 16-bit rescaled, as at inference.
    return image if image.mode == "RGB" else to_rgb_image(image)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def head_noun(phrase: str) -> str:
    """Category of a phrase: its last word, lower-cased and singularised with the same naive
    rules as the rule verifier (:func:`data_engine.backends.rules.singular`: boxes -> box,
    puppies -> puppy, people -> person; bus and cactus stay)."""
    words = _words(phrase)
    if not words:
        raise ValueError(f"phrase={phrase!r} has no words to take a category from")
    return singular(words[-1])


def best_phrase(label: str, phrases: Sequence[str]) -> str | None:
    """The input phrase that a detector's label text names best, or None if none shares a word.

    Ranked by the share of the phrase's words the label contains, then the share of the label's
    words the phrase covers, then input order. Articles are ignored: every phrase has them.
    """
    label_words = set(_words(label)) - _ARTICLES
    best, best_key = None, None
    for i, phrase in enumerate(phrases):
        words = set(_words(phrase))
        words = (words - _ARTICLES) or words
        overlap = len(words & label_words)
        if overlap == 0:
            continue
        key = (overlap / len(words), overlap / len(label_words), -i)
        if best_key is None or key > best_key:
            best, best_key = phrase, key
    return best


def coarse_position(box: Box, width: int, height: int) -> str:
    """``"<top|middle|bottom> <left|center|right>"`` from the box centre, in image thirds."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    horiz = "left" if cx < 1 / 3 else "center" if cx < 2 / 3 else "right"
    vert = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    return f"{vert} {horiz}"


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _HFBackend:
    task = ""

    def __init__(self, model: str, device: str):
        self.model_name = model
        self.device = torch.device(device)

    def provenance(self) -> dict:
        return {"backend": "hf", "model": self.model_name, "task": self.task}


class HFGrounder(_HFBackend):
    """Open-vocabulary detector (OWL-ViT / OWLv2 or Grounding DINO) behind ``Grounder``.

    ``ground(images, phrases)``: ``images`` is N PIL images, ``phrases[i]`` the phrases for
    image ``i``; returns N lists of ``GroundedBox`` (pixel xyxy clipped to the image, score in
    [0, 1], ``phrase`` one of ``phrases[i]``), keeping boxes with score > ``box_threshold``.
    Each box gets its best-scoring phrase only. Grounding DINO pads a batch to its largest image
    and its backbone sees the padding, so its outputs for mixed sizes depend on ``batch_size``.
    """

    task = "grounding"

    def __init__(self, model: str, box_threshold: float = 0.0, text_threshold: float = 0.25,
                 batch_size: int = 4, device: str = "cpu"):
        super().__init__(model, device)
        self.box_threshold, self.text_threshold, self.batch_size = box_threshold, text_threshold, batch_size
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(self.device).eval()
        self.model_type = self.model.config.model_type
        if self.model_type not in _OWL_TYPES | _GDINO_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not supported; "
                             f"expected one of {sorted(_OWL_TYPES | _GDINO_TYPES)}")

    def provenance(self) -> dict:
        return {**super().provenance(), "model_type": self.model_type}

    def ground(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[list[GroundedBox]]:
        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images but {len(phrases)} phrase lists")
        for i, plist in enumerate(phrases):
            if isinstance(plist, str):
                raise ValueError(f"phrases[{i}]={plist!r} must be a list of phrases, not a string")
            for j, p in enumerate(plist):
                if not isinstance(p, str) or not p.strip():
                    raise ValueError(f"phrases[{i}][{j}]={p!r} must be a non-empty string")
        results: list[list[GroundedBox]] = [[] for _ in images]
        todo = [i for i, plist in enumerate(phrases) if len(plist) > 0]
        for chunk in _chunks(todo, self.batch_size):
            ims = [_rgb(images[i], f"images[{i}]") for i in chunk]
            queries = [list(phrases[i]) for i in chunk]
            detect = self._detect_owl if self.model_type in _OWL_TYPES else self._detect_gdino
            for i, im, dets in zip(chunk, ims, detect(ims, queries)):
                results[i] = self._clip(dets, im.width, im.height)
        return results

    @staticmethod
    def _clip(dets, width: int, height: int) -> list[GroundedBox]:
        out = []
        for phrase, box, score in dets:
            x1, x2 = (min(max(float(v), 0.0), width) for v in (box[0], box[2]))
            y1, y2 = (min(max(float(v), 0.0), height) for v in (box[1], box[3]))
            # OWLv2 predicts on a square-padded canvas, so a box can lie wholly in the padding.
            if x2 > x1 and y2 > y1:
                out.append(GroundedBox(phrase, (x1, y1, x2, y2), float(score)))
        return out

    @torch.inference_mode()
    def _detect_owl(self, ims, queries):
        # OWL text towers have 16 positions; truncation keeps a long phrase from overflowing them.
        inputs = self.processor(text=queries, images=ims, return_tensors="pt", truncation=True).to(self.device)
        outputs = self.model(**inputs)
        # The processor pads shorter query lists with " " and the model only masks queries whose
        # first token id is 0, so the padding queries would otherwise win boxes.
        n_real = torch.tensor([len(q) for q in queries], device=outputs.logits.device)
        padded = torch.arange(outputs.logits.shape[-1], device=n_real.device)[None, :] >= n_real[:, None]
        outputs.logits = outputs.logits.masked_fill(padded[:, None], torch.finfo(outputs.logits.dtype).min)
        post = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.box_threshold, target_sizes=[(im.height, im.width) for im in ims])
        return [[(q[int(lab)], box.tolist(), score) for box, score, lab in zip(r["boxes"], r["scores"], r["labels"])]
                for r, q in zip(post, queries)]

    @torch.inference_mode()
    def _detect_gdino(self, ims, queries):
        # Grounding DINO reads one prompt per image with "." between phrases, lower-cased as in
        # its training data; a "." inside a phrase would split it, so it becomes a space.
        texts = [" ".join(re.sub(r"\s*\.\s*", " ", p).strip().lower() + "." for p in q) for q in queries]
        inputs = self.processor(images=ims, text=texts, return_tensors="pt", padding=True).to(self.device)
        outputs = self.model(**inputs)
        post = self.processor.post_process_grounded_object_detection(
            outputs, input_ids=inputs["input_ids"], threshold=self.box_threshold,
            text_threshold=self.text_threshold, target_sizes=[(im.height, im.width) for im in ims])
        # Labels are decoded token spans and may include "[SEP]", which must not match a "sep" phrase.
        special = re.compile("|".join(map(re.escape, self.processor.tokenizer.all_special_tokens)) or "$^")
        batch = []
        for r, q in zip(post, queries):
            named = [(best_phrase(special.sub(" ", label), q), box, score)
                     for box, score, label in zip(r["boxes"], r["scores"], r["text_labels"])]
            batch.append([(phrase, box.tolist(), score) for phrase, box, score in named if phrase is not None])
        return batch


class HFCaptioner(_HFBackend):
    """Image-text-to-text model behind ``Captioner``: ``caption(images) -> list[str]``, one per image."""

    task = "caption"

    def __init__(self, model: str, prompt: str = "Describe this image in one sentence.",
                 max_new_tokens: int = 40, batch_size: int = 8, device: str = "cpu"):
        super().__init__(model, device)
        self.prompt, self.max_new_tokens, self.batch_size = prompt, max_new_tokens, batch_size
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model).to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is not None:
            _prepare_for_batched_generation(self.tokenizer)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return self.generate(images, [self.prompt] * len(images))

    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        """One stripped answer per ``(images[i], prompts[i])``, greedy, new tokens only."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        out: list[str] = []
        for idx in _chunks(list(range(len(images))), self.batch_size):
            ims = [_rgb(images[i], f"images[{i}]") for i in idx]
            out += self._generate(ims, [self._text(prompts[i]) for i in idx])
        return out

    def _text(self, prompt: str) -> str:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # Without a template, processors like Llava's still need their image placeholder in the text.
        token = getattr(self.processor, "image_token", None)
        return f"{token}\n{prompt}" if token and token not in prompt else prompt

    @torch.inference_mode()
    def _generate(self, ims, texts) -> list[str]:
        inputs = self.processor(images=ims, text=texts, return_tensors="pt", padding=True).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer is not None else None
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        if not self.model.config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class HFRegionCaptioner:
    """``RegionCaptioner`` that crops each box (padded by ``pad`` of its size) and captions the
    crops with an ``HFCaptioner`` in one batch. ``category`` follows :func:`head_noun`."""

    task = "region_caption"

    def __init__(self, captioner: HFCaptioner, pad: float = 0.1,
                 prompt: str = "Describe the {phrase} in this image."):
        if pad < 0:
            raise ValueError(f"pad={pad} must be >= 0")
        self.captioner, self.pad, self.prompt = captioner, pad, prompt

    def provenance(self) -> dict:
        return {**self.captioner.provenance(), "task": self.task}

    def describe(self, image: Image.Image, boxes: Sequence[Box], phrases: Sequence[str]) -> list[RegionText]:
        """``boxes``: K pixel xyxy boxes inside ``image``; ``phrases``: K non-empty strings."""
        if len(boxes) != len(phrases):
            raise ValueError(f"got {len(boxes)} boxes but {len(phrases)} phrases")
        image = _rgb(image)
        w, h = image.size
        crops, categories = [], []
        for k, (box, phrase) in enumerate(zip(boxes, phrases)):
            if not isinstance(phrase, str) or not phrase.strip():
                raise ValueError(f"phrases[{k}]={phrase!r} must be a non-empty string")
            x1, y1, x2, y2 = check_box(box, w, h, slack=0, name=f"boxes[{k}]")
            px, py = self.pad * (x2 - x1), self.pad * (y2 - y1)
            left, top = max(0, math.floor(x1 - px)), max(0, math.floor(y1 - py))
            right, bottom = min(w, math.ceil(x2 + px)), min(h, math.ceil(y2 + py))
            crops.append(image.crop((left, top, max(right, left + 1), max(bottom, top + 1))))
            categories.append(head_noun(phrase))
        if not crops:
            return []
        texts = self.captioner.generate(crops, [self.prompt.format(phrase=p) for p in phrases])
        return [RegionText(category=c, phrase=p, description=t or p) for c, p, t in zip(categories, phrases, texts)]


def _prepare_for_batched_generation(tokenizer) -> None:
    # Decoder-only models continue from the last position, so batches must be padded on the left.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither pad_token nor eos_token; cannot pad a batch")
        tokenizer.pad_token = tokenizer.eos_token


class _CausalLMBackend(_HFBackend):
    def __init__(self, model: str, device: str):
        super().__init__(model, device)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        _prepare_for_batched_generation(self.tokenizer)
        self.model = AutoModelForCausalLM.from_pretrained(model).to(self.device).eval()


class HFVerifier(_CausalLMBackend):
    """Causal LM behind ``Verifier``: p(" yes") / (p(" yes") + p(" no")) for the next token."""

    task = "verify"
    template = ("Phrase: {phrase}\nDescription: {description}\n"
                "Does the description fit the phrase? Answer yes or no.\nAnswer:")

    def __init__(self, model: str, threshold: float = 0.5, batch_size: int = 16, device: str = "cpu"):
        super().__init__(model, device)
        self.threshold, self.batch_size = threshold, batch_size
        self.yes_id, self.no_id = self._first_new_token(" yes"), self._first_new_token(" no")
        if self.yes_id == self.no_id:
            raise ValueError(f"' yes' and ' no' share their first token id {self.yes_id} in {model}")
        # Left padding shifts absolute positions unless they are passed explicitly.
        self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters

    def _first_new_token(self, word: str) -> int:
        # Tokenised after "Answer:" as in the prompt, so SentencePiece tokenizers that split a
        # bare " yes" into "▁" + "yes" still give the word's own token.
        prefix = self.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("Answer:" + word, add_special_tokens=False)["input_ids"]
        k = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), len(prefix))
        if k >= len(full):
            raise ValueError(f"{word!r} adds no token after 'Answer:' in {self.model_name}")
        return full[k]

    def consistent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [s >= self.threshold for s in self.scores(pairs)]

    @torch.inference_mode()
    def scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """For each ``(phrase, description)``, the normalised probability of " yes", in [0, 1]."""
        prompts = [self.template.format(phrase=p, description=d) for p, d in pairs]
        out: list[float] = []
        for chunk in _chunks(prompts, self.batch_size):
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True).to(self.device)
            kwargs = dict(enc)
            if self._takes_positions:
                kwargs["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = self.model(**kwargs).logits[:, -1, [self.yes_id, self.no_id]].float()
            out += torch.softmax(logits, dim=-1)[:, 0].tolist()
        return out


class HFRewriter(_CausalLMBackend):
    """Causal LM behind ``Rewriter``: a short referring expression from the region's phrase,
    description and coarse position (image thirds), greedy, first non-empty line."""

    task = "rewrite"
    template = ("An image of {width}x{height} pixels shows {count} marked objects.\n"
                "Object: {phrase}\nDescription: {description}\nPosition: {position} of the image\n"
                "Write a short expression that refers to this object alone.")

    def __init__(self, model: str, max_new_tokens: int = 16, use_chat_template: bool = True, device: str = "cpu"):
        super().__init__(model, device)
        self.max_new_tokens = max_new_tokens
        self.use_chat_template = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    @torch.inference_mode()
    def referring(self, image: Image.Image, boxes: Sequence[Box], index: int, region: RegionText) -> str:
        """``boxes``: pixel xyxy boxes of ``image``; ``index`` selects the box to refer to."""
        if not 0 <= index < len(boxes):
            raise ValueError(f"index={index} is out of range for {len(boxes)} boxes")
        w, h = _rgb(image).size
        box = tuple(check_box(boxes[index], w, h, slack=0, name=f"boxes[{index}]").tolist())
        prompt = self.template.format(width=w, height=h, count=len(boxes), phrase=region.phrase,
                                      description=region.description, position=coarse_position(box, w, h))
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        else:
            enc = self.tokenizer(prompt + "\nExpression:", return_tensors="pt")
        enc = enc.to(self.device)
        ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [line.strip().strip('"').strip() for line in text.splitlines()]
        return next((line for line in lines if line), f"the {region.phrase}")

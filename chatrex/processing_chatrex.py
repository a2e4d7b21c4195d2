"""``ChatRexProcessor``: owns tokenisation, image resizing, the box transform and the chat template.

The model never tokenises. The processor turns (image, boxes, conversation) into model inputs:

* the first user turn is prefixed with ``<image>\\n<obj0><objfeat>...<objK-1><objfeat>\\n``;
* the chat template is applied; ``<image>`` is expanded to one placeholder per visual token;
* labels are ``-100`` everywhere except on assistant answers (and their end-of-turn token).

It is a ``transformers.ProcessorMixin`` registered for :class:`ChatRexConfig`, so
``AutoProcessor.from_pretrained(folder)`` returns it once this module is imported
(``chatrex.register_auto()``). The folder format is this class's own (``processor_config.json``
with the image settings nested, the tokenizer files beside it): ``ProcessorMixin``'s
``__init__``/persistence would need a ``transformers`` image processor, and
:class:`ChatRexImageProcessor` is a plain settings dataclass, so they are overridden here.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

from upn.image_processing import to_rgb_image

from .configuration_chatrex import ChatRexConfig
from .image_processing_chatrex import ChatRexImageProcessor, ImageMeta
from .text.chat_template import CHATML_TEMPLATE, normalize_messages
from .text.prompts import prompt_set
from .text.special_tokens import IMAGE_TOKEN, OBJFEAT_TOKEN, add_special_tokens, object_token
from .utils.atomic import atomic_write

PROCESSOR_CONFIG_NAME = "processor_config.json"
IGNORE_INDEX = -100
PROPOSAL_KEYS = {"prompt_type", "min_score", "nms_iou"}
# What AutoProcessor.from_pretrained passes on, and the hub options a user may add to it: a local
# folder is read as it is, so they change nothing (and no remote code is ever run).
AUTO_KWARGS = {"trust_remote_code", "_from_auto", "revision", "cache_dir", "local_files_only", "token", "force_download"}


class ChatRexProcessor(ProcessorMixin):
    """Turns images, boxes and conversations into ChatRex model inputs.

    Args:
        tokenizer: a fast tokenizer (offset mapping is used to place labels). The ChatRex
            special tokens are added to it if missing.
        image_processor: resizing/normalisation settings.
        num_image_tokens: visual tokens per image (grid², 576 for the full-size model).
        prompt_style: the task prompts and answer rules of the model family
            (:data:`chatrex.text.prompts.PROMPT_SETS`): ``"chatrex"`` for this project's models,
            ``"official"`` for the released ones.
        proposals: UPN settings for this model's box lists (``prompt_type``, ``min_score``,
            ``nms_iou``); ``None`` leaves the predictor's defaults.
    """

    def __init__(self, tokenizer, image_processor: ChatRexImageProcessor, num_image_tokens: int, prompt_style: str = "chatrex",
                 proposals: dict | None = None):
        # ProcessorMixin.__init__ is not called: it requires a transformers image processor.
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"ChatRexProcessor needs a fast tokenizer, got {type(tokenizer).__name__}")
        if num_image_tokens <= 0:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = int(num_image_tokens)
        self.prompts = prompt_set(prompt_style)
        self.proposals = dict(proposals) if proposals else None
        unknown = set(self.proposals or ()) - PROPOSAL_KEYS
        if unknown:
            raise ValueError(f"unknown proposal settings {sorted(unknown)}; known: {sorted(PROPOSAL_KEYS)}")
        self.token_ids = add_special_tokens(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHATML_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_model_config(cls, config, tokenizer) -> "ChatRexProcessor":
        """Image sizes and token counts taken from a :class:`ChatRexConfig`."""
        image_processor = ChatRexImageProcessor(low_size=config.low_image_size, high_size=config.high_image_size, max_objects=config.max_objects)
        return cls(tokenizer, image_processor, config.num_image_tokens)

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The ``processor_config.json`` payload (also what ``ProcessorMixin``'s ``repr`` shows)."""
        return {
            "processor_class": type(self).__name__,
            "num_image_tokens": self.num_image_tokens,
            "image_processor": self.image_processor.to_dict(),
            "prompt_style": self.prompts.name,
            "proposals": self.proposals,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        with atomic_write(os.path.join(save_directory, PROCESSOR_CONFIG_NAME)) as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **auto_kwargs) -> "ChatRexProcessor":
        """Load a local folder written by :meth:`save_pretrained`. ``auto_kwargs`` are the
        arguments ``AutoProcessor.from_pretrained`` adds (no remote code is ever run)."""
        unknown = set(auto_kwargs) - AUTO_KWARGS
        if unknown:
            raise TypeError(f"ChatRexProcessor.from_pretrained got unexpected arguments {sorted(unknown)}")
        path = os.path.join(directory, PROCESSOR_CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{directory!s} has no {PROCESSOR_CONFIG_NAME}; was it saved with ChatRexProcessor.save_pretrained?")
        with open(path) as f:
            payload = json.load(f)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(tokenizer, ChatRexImageProcessor(**payload["image_processor"]), payload["num_image_tokens"],
                   prompt_style=payload.get("prompt_style", "chatrex"), proposals=payload.get("proposals"))

    # -- prompt pieces -------------------------------------------------------------------
    @staticmethod
    def visual_prefix(num_boxes: int, has_image: bool = True) -> str:
        """``<image>\\n<obj0><objfeat>...<objK-1><objfeat>\\n`` (the object line only if K > 0)."""
        prefix = IMAGE_TOKEN + "\n" if has_image else ""
        if num_boxes:
            prefix += "".join(object_token(i) + OBJFEAT_TOKEN for i in range(num_boxes)) + "\n"
        return prefix

    def _with_visual_prefix(self, messages: list[dict], num_boxes: int, has_image: bool) -> list[dict]:
        """Put the image and object slots before the first user turn. Object slots without an
        image are allowed here (text-only pretraining fills them with text embeddings,
        ``train.text_pretrain``); ``__call__`` still rejects boxes without an image."""
        if any(IMAGE_TOKEN in m["content"] or OBJFEAT_TOKEN in m["content"] for m in messages):
            raise ValueError(f"conversation text must not contain {IMAGE_TOKEN} or {OBJFEAT_TOKEN}; the processor inserts them")
        messages = [dict(m) for m in messages]
        if has_image or num_boxes:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError("conversation has no user turn to attach the image to")
            messages[first_user]["content"] = self.visual_prefix(num_boxes, has_image) + messages[first_user]["content"]
        return messages

    def _render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _answer_spans(self, messages) -> list[tuple[int, int]]:
        """Character spans of assistant answers (with their end-of-turn markup) in the rendered text."""
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], add_generation_prompt=True)
            upto = self._render(messages[: i + 1], add_generation_prompt=False)
            if not upto.startswith(prompt):
                raise RuntimeError("chat template is not prefix-stable; cannot locate assistant answers for labels")
            # Trailing whitespace after the end-of-turn token is template layout, not answer.
            spans.append((len(prompt), len(upto.rstrip())))
        return spans

    # -- main entry ----------------------------------------------------------------------
    def encode_sample(self, conversation, num_boxes: int = 0, has_image: bool = True, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Token ids and labels for one sample, with ``<image>`` already expanded."""
        messages = self._with_visual_prefix(normalize_messages(conversation), num_boxes, has_image)
        if add_generation_prompt and messages[-1]["role"] == "assistant":
            raise ValueError("add_generation_prompt=True but the conversation already ends with an answer")
        text = self._render(messages, add_generation_prompt)
        spans = self._answer_spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        image_id = self.token_ids[IMAGE_TOKEN]
        ids: list[int] = []
        labels: list[int] = []
        for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok == image_id:
                ids.extend([image_id] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
                continue
            ids.append(tok)
            labels.append(tok if any(a <= start < b for a, b in spans) else IGNORE_INDEX)
        return ids, labels

    def __call__(
        self,
        images: Sequence | None = None,
        conversations: Sequence | None = None,
        boxes: Sequence | None = None,
        add_generation_prompt: bool = False,
        return_labels: bool = True,
        padding_side: str | None = None,
    ) -> BatchFeature:
        """Build a batch.

        Args:
            images: one image per sample (PIL/numpy, any mode) or ``None`` entries for text-only
                samples; a single image is accepted for a batch of one.
            conversations: per sample, a list of ``{"role", "content"}`` (or ``{"from", "value"}``)
                turns, or a plain question string.
            boxes: per image, pixel xyxy boxes (K_i, 4) in the original image; at most
                ``max_objects``. Boxes sticking out of the image are clipped.
            add_generation_prompt: end with the assistant header (for ``generate``).
            padding_side: ``"left"`` (default with a generation prompt) or ``"right"``.

        Returns:
            ``BatchFeature`` with ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels``
            (B, T) if asked, ``pixel_values_low`` (B_img, 3, S_low, S_low),
            ``pixel_values_high`` (B_img, 3, S_high, S_high) and ``boxes`` (B_img tensors
            (K_i, 4), normalised xyxy on the padded square).
        """
        if conversations is None:
            raise ValueError("conversations is required (one per sample)")
        if isinstance(conversations, str) or (conversations and isinstance(conversations[0], dict)):
            conversations = [conversations]
        n = len(conversations)
        if images is None:
            images = [None] * n
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} conversations")
        if boxes is None:
            boxes = [None] * n
        if len(boxes) != n:
            raise ValueError(f"{len(boxes)} box lists for {n} conversations")

        lows, highs, norm_boxes, all_ids, all_labels = [], [], [], [], []
        for image, conv, sample_boxes in zip(images, conversations, boxes):
            has_image = image is not None
            k = 0
            if has_image:
                low, high, meta = self.image_processor.preprocess(image)
                nb = self.image_processor.normalize_boxes(sample_boxes, meta)
                lows.append(low)
                highs.append(high)
                norm_boxes.append(nb)
                k = len(nb)
            elif sample_boxes is not None and len(sample_boxes):
                raise ValueError("boxes given for a sample without an image")
            ids, labels = self.encode_sample(conv, k, has_image, add_generation_prompt)
            all_ids.append(ids)
            all_labels.append(labels)

        data = self.pad(all_ids, all_labels, padding_side or ("left" if add_generation_prompt else "right"), return_labels)
        if lows:
            data["pixel_values_low"] = torch.stack(lows)
            data["pixel_values_high"] = torch.stack(highs)
            data["boxes"] = norm_boxes
        return BatchFeature(data)

    def pad(self, all_ids: list[list[int]], all_labels: list[list[int]], padding_side: str = "right", return_labels: bool = True) -> dict:
        """Pad token ids (with the pad token) and labels (with -100) to one length.

        Returns ``input_ids`` (B, T), ``attention_mask`` (B, T) and, if asked, ``labels`` (B, T)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        n, width = len(all_ids), max(len(x) for x in all_ids)
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, lab) in enumerate(zip(all_ids, all_labels)):
            sl = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            input_ids[row, sl] = torch.tensor(ids)
            attention[row, sl] = 1
            labels[row, sl] = torch.tensor(lab)
        data = {"input_ids": input_ids, "attention_mask": attention}
        if return_labels:
            data["labels"] = labels
        return data

    # -- outputs -------------------------------------------------------------------------
    def image_meta(self, image) -> ImageMeta:
        rgb = to_rgb_image(image)
        return self.image_processor.image_meta(rgb.width, rgb.height)

    def denormalize_boxes(self, boxes, image_size: tuple[int, int]) -> torch.Tensor:
        """Normalised xyxy (K, 4) -> pixel xyxy in an original image of ``(width, height)``."""
        return self.image_processor.denormalize_boxes(boxes, self.image_processor.image_meta(*image_size))

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        """Decode generated ids keeping ChatRex markup (unless ``skip_special_tokens``); chat
        end-of-turn and padding tokens are stripped either way."""
        if skip_special_tokens:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        for tok in (self.tokenizer.eos_token, self.tokenizer.pad_token, "<|im_end|>", "<|endoftext|>"):
            if tok:
                text = text.replace(tok, "")
        return text.strip()


# AutoProcessor.from_pretrained(dir) finds this class by the processor_class in the folder's
# processor_config.json (or by ChatRexConfig), once this module is imported; exist_ok keeps
# re-imports harmless. ChatRexImageProcessor is not a transformers image processor and is not
# registered with AutoImageProcessor.
AutoProcessor.register(ChatRexConfig, ChatRexProcessor, exist_ok=True)

"""The ChatRex model: dual vision encoder, object encoder, projectors and a causal LLM.

Layout follows transformers' LLaVA: :class:`ChatRexModel` is the base model without a head,
:class:`ChatRexForConditionalGeneration` adds the LM head, the loss and generation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_chatrex import ChatRexConfig
from .layers.object_encoder import ObjectEncoder
from .layers.object_pointer import ObjectPointerHead, gather_references, pad_object_features
from .layers.projector import build_projector
from .layers.token_compression import build_token_compression
from .text.special_tokens import IMAGE_TOKEN, MAX_OBJECTS, OBJFEAT_TOKEN, add_special_tokens, object_token
from .utils.strict_loading import check_loading_info, override_key_changes

# Inputs only the prefill step consumes; later decoding steps read them from the KV cache.
VISUAL_INPUT_KEYS = ("pixel_values_low", "pixel_values_high", "boxes", "image_features", "object_features", "vision_features", "object_pooled")


@dataclass
class ChatRexImageFeatures(ModelOutput):
    """Encoded image, reusable across questions (the predictor caches it).

    Attributes:
        image_embeds: (B, N, H) projected visual tokens, N = grid² (fewer with
            ``config.token_compression``), H = LLM hidden size.
        high_res_features: ConvNeXt stage outputs, each (B, C_l, H_l, W_l), for the object encoder.
    """

    image_embeds: torch.Tensor | None = None
    high_res_features: tuple[torch.Tensor, ...] | None = None


@dataclass
class ChatRexModelOutputWithPast(ModelOutput):
    """``object_memory`` (B, M, H) and ``object_memory_mask`` (B, M): each sample's box features,
    padded; set when the config's pointer head or reference features need them."""

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    object_memory: torch.Tensor | None = None
    object_memory_mask: torch.Tensor | None = None


@dataclass
class ChatRexCausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    object_memory: torch.Tensor | None = None
    object_memory_mask: torch.Tensor | None = None
    object_keys: torch.Tensor | None = None


class ChatRexPreTrainedModel(PreTrainedModel):
    config: ChatRexConfig
    config_class = ChatRexConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``, made strict: a missing, unexpected or mis-shaped key
        raises ``ValueError`` naming it (transformers only logs them and initialises the missing
        ones at random). Config overrides passed as keyword arguments may add parameters (e.g.
        ``token_compression="avgpool2x2"``) or remove them (``object_pointer_head=False``); only
        those may be missing or left unused. ``strict=False`` restores
        transformers' behaviour."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        problems = info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys")
        if strict and problems:
            added = removed = set()
            # Only now is it worth building the model twice on the meta device to tell keys a
            # config override adds or removes from real damage; a clean load skips it.
            if kwargs and "config" not in kwargs:
                _, unused = cls.config_class.from_pretrained(pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs)
                overrides = {k: v for k, v in kwargs.items() if k not in unused}
                added, removed = override_key_changes(cls.config_class, cls, pretrained_model_name_or_path, overrides)
            check_loading_info(pretrained_model_name_or_path, info, added, removed)
        return (model, info) if want_info else model

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if getattr(module, "identity_init", False):
            # The pointer head's projections start as the identity, i.e. plain dot-product
            # similarity between a position and a slot: a bilinear form whose two factors both
            # start near zero barely moves (the same trap as the small-init attention in
            # MODEL_CARD.md). transformers' init helpers skip weights loaded from a checkpoint.
            init.eye_(module.weight)
            init.zeros_(module.bias)


class ChatRexModel(ChatRexPreTrainedModel):
    """Vision encoders + object encoder + projectors + the LLM body (no LM head).

    Submodules may be passed in (e.g. a pretrained CLIP or LLM); otherwise they are built from
    the config.
    """

    def __init__(self, config: ChatRexConfig, vision_low: nn.Module | None = None, vision_high: nn.Module | None = None, language_model: nn.Module | None = None):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.vision_low = vision_low if vision_low is not None else AutoModel.from_config(config.vision_low_config)
        self.vision_high = vision_high if vision_high is not None else AutoModel.from_config(config.vision_high_config)
        self.token_compression = build_token_compression(config.token_compression, config.image_feature_dim, config.token_compression_keep)
        self.mm_projector = build_projector(config.projector_type, config.image_feature_dim, hidden)
        self.object_encoder = ObjectEncoder(
            config.object_feature_levels,
            output_size=config.roi_output_size,
            sampling_ratio=config.roi_sampling_ratio,
            temperature=config.pos_embed_temperature,
            scale=config.pos_embed_scale,
            aligned=config.roi_aligned,
            order=config.box_embed_order,
            image_size=config.high_image_size,
        )
        self.mm_object_projector = build_projector(config.projector_type, config.object_feature_dim, hidden)
        self.language_model = language_model if language_model is not None else AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # -- encoders ------------------------------------------------------------------------
    def encode_image(self, pixel_values_low: torch.Tensor, pixel_values_high: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Both towers, before any projector.

        Args:
            pixel_values_low: (B, 3, S_low, S_low) normalised, e.g. S_low = 336.
            pixel_values_high: (B, 3, S_high, S_high) normalised, e.g. S_high = 768.

        Returns:
            ``(fused, stages)``: fused (B, grid², C_low + C_last) CLIP and last-stage ConvNeXt
            tokens, and the ConvNeXt stage outputs, each (B, C_l, H_l, W_l).
        """
        low = self.vision_low(pixel_values_low.to(self.vision_low.dtype), output_hidden_states=True)
        low_tokens = low.hidden_states[self.config.vision_low_feature_layer][:, 1:]  # drop CLS
        with torch.no_grad() if self.config.vision_high_no_grad else contextlib.nullcontext():
            high = self.vision_high(pixel_values_high.to(self.vision_high.dtype), output_hidden_states=True)
        stages = tuple(high.hidden_states[1:])  # hidden_states[0] is the stem output
        last = stages[-1]
        high_tokens = last.flatten(2).transpose(1, 2)  # (B, grid², C_last), row-major like CLIP patches
        if high_tokens.shape[1] != low_tokens.shape[1]:
            raise ValueError(
                f"low-res encoder gave {low_tokens.shape[1]} tokens but high-res gave {high_tokens.shape[1]}; "
                f"check the input sizes {tuple(pixel_values_low.shape[-2:])} and {tuple(pixel_values_high.shape[-2:])}"
            )
        return torch.cat((low_tokens, high_tokens.to(low_tokens.dtype)), dim=-1), stages

    def project_image(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, grid², C_low + C_last) fused tokens -> (B, N, H) visual tokens for the LLM."""
        if self.token_compression is not None:
            fused = self.token_compression(fused.to(self.mm_projector_dtype))
        return self.mm_projector(fused.to(self.mm_projector_dtype))

    def get_image_features(self, pixel_values_low: torch.Tensor, pixel_values_high: torch.Tensor) -> ChatRexImageFeatures:
        """Encode images once: :meth:`encode_image` then :meth:`project_image`.

        Returns:
            :class:`ChatRexImageFeatures` with ``image_embeds`` (B, N, H), N = ``config.num_image_tokens``.
        """
        fused, stages = self.encode_image(pixel_values_low, pixel_values_high)
        return ChatRexImageFeatures(image_embeds=self.project_image(fused), high_res_features=stages)

    @property
    def mm_projector_dtype(self) -> torch.dtype:
        return next(self.mm_projector.parameters()).dtype

    def get_object_features(self, high_res_features, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """One token per box.

        Args:
            high_res_features: ConvNeXt stage outputs, each (B, C_l, H_l, W_l).
            boxes: B tensors (K_i, 4), normalised xyxy on the padded square.

        Returns:
            B tensors (K_i, H) in the LLM's hidden size.
        """
        for i, b in enumerate(boxes):
            if len(b) > self.config.max_objects:
                raise ValueError(f"image {i} has {len(b)} boxes; at most {self.config.max_objects} are supported")
        # float32 up to the projector, as the official code: bf16 ROI-align and sine embeddings
        # of small normalised boxes lose the precision that tells neighbouring boxes apart.
        pooled = self.object_encoder([f.float() for f in high_res_features], [b.to(high_res_features[0].device) for b in boxes])
        return self.project_objects(pooled)

    def project_objects(self, pooled: list[torch.Tensor]) -> list[torch.Tensor]:
        """B tensors (K_i, C_obj) of pooled box features (position embedding included) -> B
        tensors (K_i, H) in the LLM's hidden size."""
        for i, p in enumerate(pooled):
            if len(p) > self.config.max_objects:
                raise ValueError(f"image {i} has {len(p)} boxes; at most {self.config.max_objects} are supported")
        weight = next(self.mm_object_projector.parameters())
        projected = self.mm_object_projector(torch.cat(list(pooled)).to(weight.device, self.mm_projector_dtype))
        return list(projected.split([len(p) for p in pooled]))

    # -- embedding merge -----------------------------------------------------------------
    def _scatter(self, input_ids, inputs_embeds, token_id, features: torch.Tensor, what: str) -> torch.Tensor:
        mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), int(features.shape[0])
        if n_tokens != n_features:
            raise ValueError(f"{what}: {n_tokens} placeholder tokens in the input but {n_features} features")
        if n_features == 0:
            return inputs_embeds
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.device, inputs_embeds.dtype))

    def object_index_embeddings(self, counts: list[int]) -> torch.Tensor:
        """(sum(counts), H): the input embedding of ``<obj0>``..``<objK-1>`` for each sample's K."""
        ids = self.config.object_token_ids
        if ids is None:
            raise ValueError("config.object_index_embedding needs config.object_token_ids; add the special tokens first")
        index = torch.cat([torch.arange(k) for k in counts]) if counts else torch.zeros(0, dtype=torch.long)
        table = torch.tensor(ids, device=self.get_input_embeddings().weight.device)
        return self.get_input_embeddings()(table[index.to(table.device)])

    def object_memory(self, input_ids, object_features: list[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each sample's box features padded to (B, M, H), with the (B, M) mask.

        ``object_features`` has one entry per image; when there are fewer images than samples,
        the samples whose ``input_ids`` hold ``<image>`` own them, in order.
        """
        if len(object_features) == batch_size:
            owners = list(range(batch_size))
        else:
            if input_ids is None or self.config.image_token_id is None:
                raise ValueError(f"{len(object_features)} object feature tensors for a batch of {batch_size}: pass input_ids with <image> tokens")
            owners = (input_ids == self.config.image_token_id).any(dim=1).nonzero().flatten().tolist()
        return pad_object_features(list(object_features), owners, batch_size)

    def object_slots(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, M, H) memory -> the slot embeddings the prompt's ``<objfeat>`` tokens carry."""
        if not self.config.object_index_embedding:
            return memory
        return memory + self.object_index_embeddings([memory.shape[1]]).to(memory.dtype).unsqueeze(0)

    def merge_embeddings(self, input_ids, inputs_embeds, image_embeds=None, object_features=None, prefill=True, object_memory=None) -> torch.Tensor:
        """Write visual tokens over ``<image>`` placeholders and box tokens over ``<objfeat>``;
        with ``config.object_reference_features`` add box K's feature to every ``<objK>`` token
        (``object_memory`` = (memory, mask) from :meth:`object_memory`).

        Raises ``ValueError`` naming both counts when they differ. During cached decoding
        (``prefill=False``) placeholders are ordinary tokens.
        """
        cfg = self.config
        if cfg.object_reference_features and object_memory is not None:
            inputs_embeds = inputs_embeds + gather_references(input_ids, cfg.object_token_ids, *object_memory).to(inputs_embeds.dtype)
        if image_embeds is not None or (prefill and cfg.image_token_id is not None):
            feats = image_embeds.flatten(0, 1) if image_embeds is not None else inputs_embeds.new_zeros((0, inputs_embeds.shape[-1]))
            if cfg.image_token_id is None:
                raise ValueError("image features given but config.image_token_id is unset; add the special tokens first")
            inputs_embeds = self._scatter(input_ids, inputs_embeds, cfg.image_token_id, feats, "image")
        if object_features is not None or (prefill and cfg.objfeat_token_id is not None):
            feats = torch.cat(list(object_features)) if object_features is not None and len(object_features) else inputs_embeds.new_zeros((0, inputs_embeds.shape[-1]))
            if cfg.objfeat_token_id is None:
                raise ValueError("object features given but config.objfeat_token_id is unset; add the special tokens first")
            if cfg.object_index_embedding and len(feats):
                feats = feats + self.object_index_embeddings([len(f) for f in object_features]).to(feats.dtype)
            inputs_embeds = self._scatter(input_ids, inputs_embeds, cfg.objfeat_token_id, feats, "objects")
        return inputs_embeds

    # transformers 5.24 renamed past_key_values to cache; callers using the old name keep working.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_low: torch.Tensor | None = None,
        pixel_values_high: torch.Tensor | None = None,
        boxes: list[torch.Tensor] | None = None,
        image_features: ChatRexImageFeatures | None = None,
        object_features: list[torch.Tensor] | None = None,
        object_memory: torch.Tensor | None = None,
        object_memory_mask: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        object_pooled: list[torch.Tensor] | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> ChatRexModelOutputWithPast:
        """
        Args:
            input_ids: (B, T) token ids with ``<image>`` and ``<objfeat>`` placeholders.
            pixel_values_low, pixel_values_high: (B_img, 3, S, S), one image per sample that has one.
            boxes: B_img tensors (K_i, 4), normalised xyxy on the padded square.
            image_features, object_features: precomputed alternatives to pixels and boxes.
            object_memory, object_memory_mask: (B, M, H) and (B, M), the padded box features of
                an earlier step (``generate`` passes them to decoding steps).
            vision_features, object_pooled: encoder outputs before the projectors, (B_img, grid²,
                C_low + C_last) and B_img tensors (K_i, C_obj), e.g. from the training feature
                cache (``train.feature_cache``); only the projectors and the LLM then run.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        prefill = cache is None or cache.get_seq_length() == 0
        if vision_features is not None:
            if pixel_values_low is not None or image_features is not None:
                raise ValueError("pass one of vision_features, pixel values and image_features")
            if boxes is not None:
                raise ValueError("with vision_features pass object_pooled (pooled box features), not boxes")
            image_features = ChatRexImageFeatures(image_embeds=self.project_image(vision_features))
        if object_pooled is not None:
            if boxes is not None or object_features is not None:
                raise ValueError("pass one of object_pooled, boxes and object_features")
            object_features = self.project_objects(object_pooled)
        if pixel_values_low is not None or pixel_values_high is not None:
            if pixel_values_low is None or pixel_values_high is None:
                raise ValueError("pass both pixel_values_low and pixel_values_high, or neither")
            if image_features is not None:
                raise ValueError("pass either pixel values or image_features, not both")
            image_features = self.get_image_features(pixel_values_low, pixel_values_high)
        if boxes is not None and object_features is None:
            if image_features is None:
                raise ValueError("boxes were given without an image (pixel values or image_features)")
            object_features = self.get_object_features(image_features.high_res_features, boxes)
        memory = None
        if self.config.object_pointer_head or self.config.object_reference_features:
            if object_memory is not None:
                memory = (object_memory, object_memory_mask if object_memory_mask is not None else torch.ones(object_memory.shape[:2], dtype=torch.bool, device=object_memory.device))
            elif object_features is not None:
                batch = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
                memory = self.object_memory(input_ids, object_features, batch)
        if inputs_embeds is None:
            embed = self.get_input_embeddings()
            # The released models keep their official vocabulary, so our <image>/<objfeat>
            # placeholders get ids past the embedding table; their rows are overwritten anyway.
            outside = [i for i in (self.config.image_token_id, self.config.objfeat_token_id) if i is not None and i >= embed.num_embeddings]
            lookup_ids = input_ids.masked_fill(torch.isin(input_ids, input_ids.new_tensor(outside)), 0) if outside else input_ids
            inputs_embeds = embed(lookup_ids)
            inputs_embeds = self.merge_embeddings(
                input_ids,
                inputs_embeds,
                image_features.image_embeds if image_features is not None else None,
                object_features,
                prefill=prefill,
                object_memory=memory,
            )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return ChatRexModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            object_memory=memory[0] if memory is not None else None,
            object_memory_mask=memory[1] if memory is not None else None,
        )


class ChatRexForConditionalGeneration(ChatRexPreTrainedModel, GenerationMixin):
    """ChatRex with the LM head: training loss (labels with ``-100`` ignored) and ``generate``."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: ChatRexConfig, model: ChatRexModel | None = None, lm_head: nn.Module | None = None):
        super().__init__(config)
        self.model = model if model is not None else ChatRexModel(config)
        text = config.text_config
        self.lm_head = lm_head if lm_head is not None else nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.object_pointer = ObjectPointerHead(text.hidden_size) if config.object_pointer_head else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def attach_tokenizer(self, tokenizer) -> dict[str, int]:
        """Add the ChatRex special tokens to ``tokenizer``, grow the input and output embeddings to
        match (new rows initialised at the mean of the old ones), and record the placeholder ids
        in the config. Returns ``{token: id}``."""
        ids = add_special_tokens(tokenizer)
        # The placeholders need no row (the model overwrites their positions), so a released
        # model whose vocabulary ends at </objects> keeps its official size.
        needed = max(i for t, i in ids.items() if t not in (IMAGE_TOKEN, OBJFEAT_TOKEN)) + 1
        if needed > self.get_input_embeddings().num_embeddings:
            self.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        self.config.image_token_id = ids[IMAGE_TOKEN]
        self.config.objfeat_token_id = ids[OBJFEAT_TOKEN]
        self.config.object_token_ids = [ids[object_token(i)] for i in range(MAX_OBJECTS)]
        return ids

    def get_image_features(self, pixel_values_low: torch.Tensor, pixel_values_high: torch.Tensor) -> ChatRexImageFeatures:
        return self.model.get_image_features(pixel_values_low, pixel_values_high)

    def get_object_features(self, high_res_features, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.model.get_object_features(high_res_features, boxes)

    # transformers 5.24 renamed past_key_values to cache; callers using the old name keep working.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values_low: torch.Tensor | None = None,
        pixel_values_high: torch.Tensor | None = None,
        boxes: list[torch.Tensor] | None = None,
        image_features: ChatRexImageFeatures | None = None,
        object_features: list[torch.Tensor] | None = None,
        object_memory: torch.Tensor | None = None,
        object_memory_mask: torch.Tensor | None = None,
        object_keys: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        object_pooled: list[torch.Tensor] | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ChatRexCausalLMOutputWithPast:
        """Same inputs as :meth:`ChatRexModel.forward`, plus ``labels`` (B, T) with -100 on
        tokens that carry no loss, and ``object_keys`` (B, M, H): the pointer head's projected
        slot keys from an earlier step (``generate`` passes them to decoding steps). Returns
        logits (B, T, V) and, with labels, the mean next-token cross-entropy."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values_low=pixel_values_low,
            pixel_values_high=pixel_values_high,
            boxes=boxes,
            image_features=image_features,
            object_features=object_features,
            object_memory=object_memory,
            object_memory_mask=object_memory_mask,
            vision_features=vision_features,
            object_pooled=object_pooled,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        if self.object_pointer is not None:
            if self.config.object_token_ids is None:
                raise ValueError("config.object_pointer_head needs config.object_token_ids; add the special tokens first (attach_tokenizer)")
            if object_keys is None and outputs.object_memory is not None:
                object_keys = self.object_pointer.project_keys(self.model.object_slots(outputs.object_memory))
            logits = self.object_pointer.write_logits(logits, hidden, self.config.object_token_ids, object_keys, outputs.object_memory_mask)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return ChatRexCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            object_memory=outputs.object_memory,
            object_memory_mask=outputs.object_memory_mask,
            object_keys=object_keys if self.object_pointer is not None else None,
        )

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # The pointer head and reference features need the boxes at every decoding step, after
        # the visual inputs themselves have been dropped.
        if getattr(outputs, "object_memory", None) is not None:
            model_kwargs["object_memory"] = outputs.object_memory
            model_kwargs["object_memory_mask"] = outputs.object_memory_mask
        if getattr(outputs, "object_keys", None) is not None:
            # The pointer head's slot keys, projected once at prefill (the box list is fixed).
            model_kwargs["object_keys"] = outputs.object_keys
        return model_kwargs

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in VISUAL_INPUT_KEYS:
                inputs.pop(key, None)
        return inputs


# Registering with the auto classes lets AutoModel*.from_pretrained(dir) resolve a saved ChatRex
# checkpoint by its model_type (AutoConfig is registered beside ChatRexConfig). It happens here,
# on first use of the model classes, because ``chatrex`` imports its parts lazily; exist_ok
# keeps re-imports harmless.
AutoModel.register(ChatRexConfig, ChatRexModel, exist_ok=True)
AutoModelForCausalLM.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ChatRexConfig, ChatRexForConditionalGeneration, exist_ok=True)

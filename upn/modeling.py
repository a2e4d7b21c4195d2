"""UPNModel: two-stage deformable DETR whose class logit is a prompt dot product."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.ops import box_convert

from . import build
from .backbone import MultiScaleBackbone
from .config import UPNConfig
from .decoder import DeformableDecoder
from .encoder import DeformableEncoder
from .layers import MLP, inverse_sigmoid
from .losses import SetCriterion

PROMPT_TYPES = ("fine", "coarse")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_BOX_TOL = 1e-3  # tolerated rounding outside [0, 1] for target boxes


@dataclass
class UPNOutput:
    """Raw predictions for a batch.

    logits: (B, Q) prompt-similarity logits of the last decoder layer (sigmoid = score).
    boxes: (B, Q, 4) normalised cxcywh relative to the unpadded image.
    aux: earlier decoder layers, list of {"logits", "boxes"} with the same shapes.
    enc_logits / enc_boxes: (B, Q) / (B, Q, 4) the selected encoder proposals.
    prompt_types: the prompt used for each image ("fine" or "coarse").
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    aux: list = field(default_factory=list)
    enc_logits: torch.Tensor | None = None
    enc_boxes: torch.Tensor | None = None
    prompt_types: list = field(default_factory=list)

    @property
    def scores(self) -> torch.Tensor:
        return self.logits.sigmoid()


@dataclass
class EncoderState:
    """Prompt-independent encoder results, reusable for several prompts (see ``decode``).

    memory: (B, S, d); padding_mask: (B, S) bool True = padding; spatial_shapes: (L, 2);
    valid_ratios: (B, L, 2); proposals: (B, S, 4) normalised cxcywh anchor boxes;
    proposal_valid: (B, S) bool.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: torch.Tensor
    valid_ratios: torch.Tensor
    proposals: torch.Tensor
    proposal_valid: torch.Tensor


def check_targets(targets: Sequence[dict], batch_size: int, device: torch.device) -> list[dict]:
    """Validate training targets and move them to ``device``.

    Each target is a dict with ``boxes``: (K, 4) normalised cxcywh relative to the
    unpadded image (K may be 0). Other keys (``labels``, ``granularity``) are
    ignored: UPN is class-agnostic and the granularity is ``prompt_type``.
    Raises ValueError for a wrong count, wrong shape, NaN/inf, non-positive size,
    or a box reaching outside the image (clip boxes before calling; ``train.upn`` does).
    """
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
    checked = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t:
            raise ValueError(f"targets[{i}] must be a dict with a 'boxes' entry")
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape (K, 4), got {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")
        if (boxes[:, 2:] <= 0).any():
            raise ValueError(f"targets[{i}]['boxes'] has a box with non-positive width or height")
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        if (xyxy < -_BOX_TOL).any() or (xyxy > 1 + _BOX_TOL).any():
            raise ValueError(f"targets[{i}]['boxes'] has a box outside the image [0, 1]; clip it first")
        checked.append({"boxes": boxes})
    return checked


class UPNModel(nn.Module):
    """Universal Proposal Network.

    Submodules may be passed in; missing ones are built from ``config`` by
    ``upn.build``. ``forward(pixel_values, prompt_type, targets=None, pixel_mask=None)``:

    - pixel_values: (B, 3, H, W) normalised RGB (ImageNet mean/std).
    - prompt_type: "fine" / "coarse", or a sequence of B of them (mixed batches).
    - pixel_mask: optional (B, H, W), 1 = real pixel, 0 = padding (images of
      different sizes are padded bottom/right to a common size).
    - targets: optional B dicts with ``boxes`` (K, 4) normalised cxcywh relative
      to each image's unpadded extent.

    Returns the loss dict of ``SetCriterion`` when targets are given, else ``UPNOutput``.
    """

    def __init__(self, config: UPNConfig, backbone: MultiScaleBackbone | None = None,
                 encoder: DeformableEncoder | None = None, decoder: DeformableDecoder | None = None,
                 criterion: SetCriterion | None = None) -> None:
        super().__init__()
        self.config = config
        t = config.transformer
        d = t.d_model
        self.backbone = backbone if backbone is not None else build.build_backbone(config)
        self.encoder = encoder if encoder is not None else build.build_encoder(config)
        self.decoder = decoder if decoder is not None else build.build_decoder(config)
        self.criterion = criterion if criterion is not None else build.build_criterion(config)
        num_levels = self.backbone.num_levels
        assert num_levels == config.num_feature_levels, \
            f"backbone gives {num_levels} levels, config says {config.num_feature_levels}"
        self.level_embed = nn.Parameter(torch.empty(num_levels, d))
        # Two-stage head: per-token proposal feature, prompt logit and box delta.
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.enc_bbox_head = MLP(d, d, 4, 3)
        self.tgt_embed = nn.Embedding(t.num_queries, d)
        if t.class_head == "projected":
            # From-scratch models learn a projection and a prior bias per classifier.
            self.enc_class_proj = nn.Linear(d, d)
            self.class_proj = nn.ModuleList(nn.Linear(d, d) for _ in range(t.num_decoder_layers))
            # One bias per classifier (decoder layers + encoder), set to the focal prior.
            self.class_bias = nn.Parameter(torch.empty(t.num_decoder_layers + 1))
        else:
            # "dot": the released UPN's parameter-free ContrastiveAssign.
            self.enc_class_proj = None
            self.class_proj = None
            self.register_parameter("class_bias", None)
        self.fine_grained_prompt = nn.Parameter(torch.empty(1, d))
        self.coarse_grained_prompt = nn.Parameter(torch.empty(1, d))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)
        nn.init.normal_(self.fine_grained_prompt)
        nn.init.normal_(self.coarse_grained_prompt)
        if self.class_bias is not None:
            # Focal-loss prior: every query starts at p = 0.01 so the many negatives
            # do not swamp the first steps (RetinaNet init).
            nn.init.constant_(self.class_bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.enc_bbox_head.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_head.layers[-1].bias)

    # ----------------------------------------------------------------- helpers
    def prompt_vectors(self, prompt_type: str | Sequence[str], batch_size: int) -> torch.Tensor:
        """(B, d) prompt per image; raises ValueError for an unknown type or wrong count."""
        types = [prompt_type] * batch_size if isinstance(prompt_type, str) else list(prompt_type)
        if len(types) != batch_size:
            raise ValueError(f"prompt_type has {len(types)} entries for a batch of {batch_size}")
        bad = [p for p in types if p not in PROMPT_TYPES]
        if bad:
            raise ValueError(f"prompt_type must be 'fine' or 'coarse', got {bad[0]!r}")
        is_fine = torch.tensor([p == "fine" for p in types], device=self.fine_grained_prompt.device)
        return torch.where(is_fine[:, None], self.fine_grained_prompt, self.coarse_grained_prompt)

    def _classify(self, index: int, feats: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Prompt logit of classifier ``index`` (decoder layer, or -1 for the encoder).
        feats (B, N, d), prompts (B, d) -> (B, N).

        "projected": <proj(feats), prompt> / sqrt(d) + bias; the 1/sqrt(d) keeps the
        initial logits near the prior bias. "dot": <feats, prompt>, no bias, no scale.
        """
        if self.class_bias is None:
            return torch.einsum("bnd,bd->bn", feats, prompts)
        proj = self.enc_class_proj if index == -1 else self.class_proj[index]
        return torch.einsum("bnd,bd->bn", proj(feats), prompts) / math.sqrt(feats.shape[-1]) + self.class_bias[index]

    # ---------------------------------------------------------------- forward
    def encode(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> EncoderState:
        """Backbone + deformable encoder + anchor proposals (independent of the prompt)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        b, _, h, w = pixel_values.shape
        if h == 0 or w == 0:
            raise ValueError(f"pixel_values has an empty spatial size {h}x{w}")
        if pixel_mask is None:
            padding = torch.zeros(b, h, w, dtype=torch.bool, device=pixel_values.device)
        else:
            if pixel_mask.shape != (b, h, w):
                raise ValueError(f"pixel_mask must be {(b, h, w)}, got {tuple(pixel_mask.shape)}")
            padding = ~pixel_mask.bool()
        ms = self.backbone(pixel_values, padding)
        shapes = torch.tensor([f.shape[-2:] for f in ms.features], dtype=torch.int64, device=pixel_values.device)
        valid_ratios = torch.stack([self._valid_ratio(m) for m in ms.masks], 1)
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in ms.features], 1)
        pos = torch.cat([(p.flatten(2).transpose(1, 2) + self.level_embed[i])
                         for i, p in enumerate(ms.pos)], 1)
        mask = torch.cat([m.flatten(1) for m in ms.masks], 1)
        memory = self.encoder(src, pos, shapes, valid_ratios, mask)
        proposals, valid = self._anchor_proposals(ms.masks, mask)
        return EncoderState(memory, mask, shapes, valid_ratios, proposals, valid)

    @staticmethod
    def _valid_ratio(mask: torch.Tensor) -> torch.Tensor:
        """mask (B, H, W) True = pad -> (B, 2) valid (w, h) fraction."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        return torch.stack([valid_w / w, valid_h / h], -1)

    @staticmethod
    def _anchor_proposals(masks: list, flat_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One square anchor per token: centre at the pixel centre, side 0.05 * 2^level
        of the unpadded image. Returns ((B, S, 4) cxcywh, (B, S) valid)."""
        out = []
        for lvl, m in enumerate(masks):
            b, h, w = m.shape
            valid_h = (~m[:, :, 0]).sum(1).float().clamp(min=1)
            valid_w = (~m[:, 0, :]).sum(1).float().clamp(min=1)
            ys, xs = torch.meshgrid(torch.arange(h, device=m.device, dtype=torch.float32),
                                    torch.arange(w, device=m.device, dtype=torch.float32), indexing="ij")
            cx = (xs.reshape(1, -1) + 0.5) / valid_w[:, None]
            cy = (ys.reshape(1, -1) + 0.5) / valid_h[:, None]
            wh = torch.full_like(cx, 0.05 * 2.0 ** lvl)
            out.append(torch.stack([cx, cy, wh, wh], -1))
        proposals = torch.cat(out, 1)
        # Anchors whose centre or size sits at the border are unusable in logit space.
        inside = ((proposals > 0.01) & (proposals < 0.99)).all(-1)
        return proposals, inside & ~flat_mask

    def decode(self, state: EncoderState, prompt_type: str | Sequence[str],
               query_indices: torch.Tensor | None = None) -> UPNOutput:
        """Query selection by prompt logit, then the refining decoder.

        ``query_indices``: optional (B, Q) int64 token indices into ``state.memory`` to use
        instead of the top-Q by prompt logit (e.g. another implementation's selection,
        to compare two implementations query by query despite near-tied scores).
        """
        memory = state.memory
        b = memory.shape[0]
        t = self.config.transformer
        prompts = self.prompt_vectors(prompt_type, b)
        types = [prompt_type] * b if isinstance(prompt_type, str) else list(prompt_type)
        valid = state.proposal_valid
        feats = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid[..., None], 0.0)))
        enc_logits = self._classify(-1, feats, prompts)
        if t.mask_invalid_proposals:
            proposal_logits = inverse_sigmoid(state.proposals)
        else:
            # Official: unusable anchors get an infinite logit (box 1, 1, 1, 1) but stay rankable.
            p = state.proposals
            proposal_logits = torch.log(p / (1 - p)).masked_fill(~valid[..., None], float("inf"))
        enc_coord = self.enc_bbox_head(feats) + proposal_logits
        if query_indices is None:
            k = min(t.num_queries, memory.shape[1])
            ranked = enc_logits.detach()
            if t.mask_invalid_proposals:
                # Padded/border tokens can never be picked.
                ranked = ranked.masked_fill(~valid, float("-inf"))
            topk = ranked.topk(k, dim=1).indices
        else:
            if query_indices.shape[0] != b or query_indices.ndim != 2 or query_indices.shape[1] > t.num_queries:
                raise ValueError(f"query_indices must be (B={b}, Q<={t.num_queries}), got {tuple(query_indices.shape)}")
            topk = query_indices.to(memory.device)
            k = topk.shape[1]
        sel_logits = enc_logits.gather(1, topk)
        sel_boxes = enc_coord.gather(1, topk[..., None].expand(-1, -1, 4)).sigmoid()
        tgt = self.tgt_embed.weight[:k][None].expand(b, -1, -1)
        hidden, boxes = self.decoder(tgt, sel_boxes.detach(), memory, state.spatial_shapes,
                                     state.valid_ratios, state.padding_mask)
        layer_logits = [self._classify(i, h, prompts) for i, h in enumerate(hidden)]
        aux = [{"logits": lg, "boxes": bx} for lg, bx in zip(layer_logits[:-1], boxes[:-1])]
        return UPNOutput(layer_logits[-1], boxes[-1], aux, sel_logits, sel_boxes, types)

    def encoder_logits(self, state: EncoderState, prompt_type: str | Sequence[str]) -> torch.Tensor:
        """(B, S) prompt logit of every encoder token: the score the query selection ranks."""
        prompts = self.prompt_vectors(prompt_type, state.memory.shape[0])
        valid = state.proposal_valid
        feats = self.enc_output_norm(self.enc_output(state.memory.masked_fill(~valid[..., None], 0.0)))
        return self._classify(-1, feats, prompts)

    def forward(self, pixel_values: torch.Tensor, prompt_type: str | Sequence[str],
                targets: Sequence[dict] | None = None,
                pixel_mask: torch.Tensor | None = None) -> UPNOutput | dict[str, torch.Tensor]:
        state = self.encode(pixel_values, pixel_mask)
        out = self.decode(state, prompt_type)
        if targets is None:
            return out
        checked = check_targets(targets, pixel_values.shape[0], pixel_values.device)
        raw = {"logits": out.logits, "boxes": out.boxes, "aux": out.aux,
               "enc": {"logits": out.enc_logits, "boxes": out.enc_boxes}}
        return self.criterion(raw, checked)

    # ------------------------------------------------------------- save/load
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``. ``state_dict``: the
        weights to write when they are not the module's own (e.g. gathered from a sharded run)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(self.config.to_dict(), fh, indent=2)
        weights = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "UPNModel":
        """Build from ``config.json`` and load ``model.safetensors`` strictly: a missing,
        unexpected or mis-shaped key is a ``ValueError`` naming the folder."""
        cfg_path = os.path.join(directory, CONFIG_NAME)
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        for p in (cfg_path, weights_path):
            if not os.path.isfile(p):
                final = os.path.join(directory, "final", CONFIG_NAME)
                hint = f" (a training run's output folder? its model is {os.path.dirname(final)})" if os.path.isfile(final) else ""
                raise FileNotFoundError(f"UPN checkpoint file missing: {p}{hint}")
        model = cls(UPNConfig.load(cfg_path))
        state = load_file(weights_path, device=str(map_location))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:  # torch lists the missing, unexpected and mis-shaped keys
            raise ValueError(f"UPN weights in {directory} do not match the model: {err}") from err
        return model.to(map_location).eval()

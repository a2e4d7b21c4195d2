"""The released UPN checkpoint (``upn_large.pth``) to :mod:`upn`'s layout and back.

Usage::

    chatrex convert upn upn_large.pth converted/                    # official -> safetensors folder
    chatrex convert upn converted/ upn_official.pth --to-official   # and back
    python -m chatrex.convert.upn upn_large.pth converted/          # the same command

or in memory, ``load_upn_predictor("upn_large.pth")`` (``upn`` imports nothing from ``chatrex``,
so ``UPNPredictor.from_pretrained`` loads converted folders only).

:data:`UPN_TABLE` plus :func:`level_rows` (the rules that depend on the number of feature
levels) is the whole renaming, read both ways by :mod:`chatrex.convert.rules`; it is also the
documentation of the layout. Named special cases:

- ``qkv``: the official Swin fuses q/k/v in one Linear (``attn.qkv``); the transformers Swin
  keeps ``q_proj`` / ``k_proj`` / ``v_proj``. The table maps the fused tensor to a fused name
  of ours (``attention.qkv.*``), which is split / concatenated on dim 0.
- ``box-head aliases``: the official model shares one box MLP between every decoder layer and
  registers it twice (``bbox_embed.{l}`` and ``transformer.decoder.bbox_embed.{l}``), so the
  checkpoint holds 2 x 6 copies. They must be identical; one is kept.
- ``relative_position_index``: a buffer fully determined by the window size; the official
  checkpoint stores it, transformers recomputes it. It is checked, not loaded.
- :data:`IGNORED_OFFICIAL`: keys the official model carries but never uses in its output
  (``ref_point_head_point`` is multiplied by 0.0). Dropped; written as zeros in reverse.
- :data:`UNUSED_OURS`: our keys with no official counterpart that never reach an output (the
  transformers ``SwinModel`` final LayerNorm, which ``SwinBackbone`` skips). Filled with the
  LayerNorm identity.

Anything else left over is a ``ValueError`` (:class:`~chatrex.utils.strict_loading.KeyReport`)
listing the keys: a source key no rule maps, a key of the model nothing filled, a wrong shape.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from functools import lru_cache

import torch

from upn.build import OFFICIAL_IMAGE_FIELDS, OFFICIAL_TRANSFORMER_FIELDS, upn_large_config
from upn.config import ImageConfig, UPNConfig
from upn.modeling import UPNModel
from upn.predictor import UPNPredictor, resolve_weights

from ..official.synthetic import synthetic_tensor
from ..utils.strict_loading import KeyReport
from .rules import KeyRules

SWIN_OFFICIAL = "backbone.model.backbone."
SWIN_OURS = "backbone.body.swin."
_BLOCK = "layers.{i}.blocks.{j}."
BOX_HEAD = "transformer.decoder.bbox_embed."  # the canonical copy of the box head (module doc)
IGNORED_OFFICIAL = ("transformer.decoder.ref_point_head_point.",)
UNUSED_OURS = ("backbone.body.swin.layernorm.",)

# Ordered table: official name <-> ours ({i}, {j}: layer numbers). The per-level rows come from
# level_rows(config).
UPN_TABLE: list[tuple[str, str]] = [
    # Swin backbone (official swin.py <-> transformers SwinBackbone)
    (SWIN_OFFICIAL + "patch_embed.proj.", SWIN_OURS + "embeddings.patch_embeddings.projection."),
    (SWIN_OFFICIAL + "patch_embed.norm.", SWIN_OURS + "embeddings.norm."),
    (SWIN_OFFICIAL + _BLOCK + "norm1.", SWIN_OURS + "encoder." + _BLOCK + "layernorm_before."),
    (SWIN_OFFICIAL + _BLOCK + "norm2.", SWIN_OURS + "encoder." + _BLOCK + "layernorm_after."),
    (SWIN_OFFICIAL + _BLOCK + "attn.relative_position_bias_table",
     SWIN_OURS + "encoder." + _BLOCK + "attention.relative_position_bias.relative_position_bias_table"),
    (SWIN_OFFICIAL + _BLOCK + "attn.qkv.", SWIN_OURS + "encoder." + _BLOCK + "attention.qkv."),  # special case: split
    (SWIN_OFFICIAL + _BLOCK + "attn.proj.", SWIN_OURS + "encoder." + _BLOCK + "attention.o_proj."),
    (SWIN_OFFICIAL + _BLOCK + "mlp.", SWIN_OURS + "encoder." + _BLOCK + "mlp."),
    (SWIN_OFFICIAL + "layers.{i}.downsample.", SWIN_OURS + "encoder.layers.{i}.downsample."),
    ("transformer.level_embed", "level_embed"),
    # encoder layer: attn -> norm1 -> FFN -> norm2 (ours: attn -> norm -> ffn.norm)
    ("transformer.encoder.layers.{i}.self_attn.", "encoder.layers.{i}.self_attn."),
    ("transformer.encoder.layers.{i}.norm1.", "encoder.layers.{i}.norm."),
    ("transformer.encoder.layers.{i}.linear1.", "encoder.layers.{i}.ffn.linear1."),
    ("transformer.encoder.layers.{i}.linear2.", "encoder.layers.{i}.ffn.linear2."),
    ("transformer.encoder.layers.{i}.norm2.", "encoder.layers.{i}.ffn.norm."),
    # decoder layer: self-attn -> norm2, cross-attn -> norm1, FFN -> norm3 (official numbering)
    ("transformer.decoder.layers.{i}.self_attn.", "decoder.layers.{i}.self_attn."),
    ("transformer.decoder.layers.{i}.norm2.", "decoder.layers.{i}.norm1."),
    ("transformer.decoder.layers.{i}.cross_attn.", "decoder.layers.{i}.cross_attn."),
    ("transformer.decoder.layers.{i}.norm1.", "decoder.layers.{i}.norm2."),
    ("transformer.decoder.layers.{i}.linear1.", "decoder.layers.{i}.ffn.linear1."),
    ("transformer.decoder.layers.{i}.linear2.", "decoder.layers.{i}.ffn.linear2."),
    ("transformer.decoder.layers.{i}.norm3.", "decoder.layers.{i}.ffn.norm."),
    ("transformer.decoder.ref_point_head.", "decoder.ref_point_head."),
    ("transformer.decoder.norm.", "decoder.norm."),
    # canonical copy of the (shared) box head; the aliases are a special case
    (BOX_HEAD + "{i}.", "decoder.bbox_heads.{i}."),
    ("transformer.tgt_embed.", "tgt_embed."),
    ("transformer.enc_output.", "enc_output."),
    ("transformer.enc_output_norm.", "enc_output_norm."),
    ("transformer.enc_out_bbox_embed.", "enc_bbox_head."),
    ("transformer.fine_grained_prompt.weight", "fine_grained_prompt"),
    ("transformer.coarse_grained_prompt.weight", "coarse_grained_prompt"),
]


def level_rows(out_features: tuple[str, ...], num_extra_levels: int) -> list[tuple[str, str]]:
    """The rows of the table that depend on the feature levels: each backbone stage's output
    norm (official ``norm{k}`` follows stage k, 0-based; transformers names stages from 1) and
    the input projections (the official list holds the backbone levels, then the extra
    stride-2 levels)."""
    rows = [(f"{SWIN_OFFICIAL}norm{int(s.removeprefix('stage')) - 1}.", f"backbone.body.hidden_states_norms.{s}.")
            for s in out_features]
    rows += [(f"input_proj.{lvl}.", f"backbone.input_proj.{lvl}.") for lvl in range(len(out_features))]
    rows += [(f"input_proj.{len(out_features) + e}.", f"backbone.extra_proj.{e}.") for e in range(num_extra_levels)]
    return rows


@lru_cache(maxsize=8)
def _rules(out_features: tuple[str, ...], num_extra_levels: int) -> KeyRules:
    return KeyRules(UPN_TABLE + level_rows(out_features, num_extra_levels))


def key_rules(config: UPNConfig) -> KeyRules:
    """:data:`UPN_TABLE` with the level rows of ``config``, compiled (once per level layout)."""
    return _rules(tuple(config.backbone.out_features), config.transformer.num_extra_levels)


# -- special cases (module doc) ----------------------------------------------------------------
_FUSED_QKV = re.compile(re.escape(SWIN_OURS) + r"(encoder\.layers\.\d+\.blocks\.\d+\.attention\.)qkv\.(weight|bias)")
_SPLIT_QKV = re.compile(re.escape(SWIN_OURS) + r"(encoder\.layers\.\d+\.blocks\.\d+\.attention\.)([qkv])_proj\.(weight|bias)")
_RPI = re.compile(re.escape(SWIN_OFFICIAL) + r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index")
_BOX_ALIAS = re.compile(r"(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.(.*)")


def _split_qkv(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our fused ``attention.qkv.*`` -> ``q_proj`` / ``k_proj`` / ``v_proj``; other keys as they are."""
    m = _FUSED_QKV.fullmatch(name)
    if not m:
        return {name: value}
    return {f"{SWIN_OURS}{m.group(1)}{n}_proj.{m.group(2)}": part.clone() for n, part in zip("qkv", value.chunk(3, dim=0))}


def _fuse_qkv(state: dict) -> tuple[dict, list[str]]:
    """The inverse of :func:`_split_qkv` over a state dict: ``(state with fused qkv, keys of
    an incomplete q/k/v triple)``."""
    out, parts = {}, {}
    for key, value in state.items():
        m = _SPLIT_QKV.fullmatch(key)
        if m:
            parts.setdefault(f"{SWIN_OURS}{m.group(1)}qkv.{m.group(3)}", {})[m.group(2)] = key
        else:
            out[key] = value
    partial = []
    for fused, names in sorted(parts.items()):
        if set(names) == set("qkv"):
            out[fused] = torch.cat([state[names[n]] for n in "qkv"], 0)
        else:
            partial += names.values()
    return out, partial


def _box_canonical(key: str, shared: bool) -> str | None:
    """Official box-head key -> the key that holds its values (None if not a box-head key)."""
    m = _BOX_ALIAS.fullmatch(key)
    if not m:
        return None
    return f"{BOX_HEAD}{0 if shared else m.group(1)}.{m.group(2)}"


def _box_aliases(canonical: str, config: UPNConfig) -> list[str]:
    """Every official key that holds the values of the box-head key ``canonical`` (itself included)."""
    t = config.transformer
    _, _, _, layer, rest = canonical.split(".", 4)
    layers = range(t.num_decoder_layers) if t.share_box_head else [int(layer)]
    return [name for lid in layers for name in (f"{BOX_HEAD}{lid}.{rest}", f"bbox_embed.{lid}.{rest}")]


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) int64 Swin lookup index into the (2w-1)^2 bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def _meta_state(config: UPNConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return UPNModel(config).state_dict()


def expected_state_shapes(config: UPNConfig) -> dict[str, tuple]:
    """Our state-dict keys and shapes for ``config`` (built on the meta device: no memory)."""
    return {k: tuple(v.shape) for k, v in _meta_state(config).items()}


# -- the two directions -------------------------------------------------------------------------
def official_to_ours(state: dict, config: UPNConfig) -> dict[str, torch.Tensor]:
    """Official UPN state dict -> ours for ``config``. Raises ValueError naming unmapped,
    missing or mis-shaped keys, or differing copies of the shared box head."""
    window = config.backbone.kwargs.get("window_size", 7)
    kept, problems = {}, []
    for key, value in state.items():
        if key.startswith(IGNORED_OFFICIAL):
            continue
        if _RPI.fullmatch(key):
            if not torch.equal(value.cpu().long(), relative_position_index(window)):
                problems.append(f"{key} is not the standard index for window {window}")
            continue
        canonical = _box_canonical(key, config.transformer.share_box_head)
        if canonical is not None and canonical != key:
            if canonical not in state:
                problems.append(f"{key} is a box-head alias but {canonical} is missing")
            elif not torch.equal(value, state[canonical]):
                problems.append(f"{key} differs from {canonical} (the box head must be shared)")
            continue
        kept[key] = value
    renamed, unmapped = key_rules(config).rename(kept)
    out = {}
    for key, new in renamed.items():
        out.update(_split_qkv(new, kept[key]))
    expected = _meta_state(config)
    for key, like in expected.items():
        if key.startswith(UNUSED_OURS) and key not in out:
            out[key] = torch.ones(like.shape) if key.endswith("weight") else torch.zeros(like.shape)
    report = KeyReport.against("official UPN checkpoint", out, expected, unmapped)
    report.problems += problems
    report.raise_if_any()
    return out


def ours_to_official(state: dict, config: UPNConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the official layout (every official key, aliases and ignored ones
    included, so the official ``load_state_dict(strict=True)`` accepts it)."""
    fused, partial = _fuse_qkv({k: v for k, v in state.items() if not k.startswith(UNUSED_OURS)})
    renamed, unmapped = key_rules(config).rename(fused, inverse=True)
    KeyReport("UPN state dict (to the official layout)", unmapped=unmapped + partial).raise_if_any()
    window = config.backbone.kwargs.get("window_size", 7)
    out = {}
    for key, name in renamed.items():
        value = fused[key]
        names = _box_aliases(name, config) if name.startswith(BOX_HEAD) else [name]
        out.update(dict.fromkeys(names, value))
        if name.endswith(".attn.qkv.weight"):
            out[name.removesuffix("qkv.weight") + "relative_position_index"] = relative_position_index(window)
    d = config.transformer.d_model
    for lid in range(2):  # the unused ref_point_head_point MLP(d, d, d, 2)
        out[f"{IGNORED_OFFICIAL[0]}layers.{lid}.weight"] = torch.zeros(d, d)
        out[f"{IGNORED_OFFICIAL[0]}layers.{lid}.bias"] = torch.zeros(d)
    return out


def synthetic_official_state(shapes: dict, shared_box_head: bool = True) -> dict[str, torch.Tensor]:
    """Deterministic weights (:func:`chatrex.official.synthetic.synthetic_tensor`) for every
    official key in ``shapes`` except the ``relative_position_index`` buffers (the caller keeps
    those). Aliases of the shared box head get the values of their canonical key, as in the
    official model. ``tools/oracle/make_upn_fixture.py`` fills the official code with them."""
    return {key: synthetic_tensor(_box_canonical(key, shared_box_head) or key, tuple(shape))
            for key, shape in shapes.items() if not key.endswith("relative_position_index")}


def infer_config(state: dict, num_heads: int = 8) -> UPNConfig:
    """``UPNConfig`` for an official state dict: ``upn-large`` with the sizes read from the
    shapes (Swin width/depths/heads/window, levels, layers, queries, FFN width, points).
    ``num_heads`` (of the deformable attention) is not visible in the shapes: official 8."""
    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({rx.match(k).group(1) for k in state if rx.match(k)})

    def shape(key: str) -> tuple:
        if key not in state:
            raise ValueError(f"not an official UPN state dict: {key} is missing")
        return tuple(state[key].shape)

    cfg = upn_large_config()
    embed, _, patch, _ = shape(SWIN_OFFICIAL + "patch_embed.proj.weight")
    stages = count(re.escape(SWIN_OFFICIAL) + r"layers\.(\d+)\.blocks\.0\.norm1\.weight")
    depths = [count(re.escape(SWIN_OFFICIAL) + rf"layers\.{s}\.blocks\.(\d+)\.norm1\.weight") for s in range(stages)]
    heads = [shape(f"{SWIN_OFFICIAL}layers.{s}.blocks.0.attn.relative_position_bias_table")[1] for s in range(stages)]
    table = shape(f"{SWIN_OFFICIAL}layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window = (math.isqrt(table) + 1) // 2
    outs = [f"stage{k + 1}" for k in range(stages) if f"{SWIN_OFFICIAL}norm{k}.weight" in state]
    levels, d = shape("transformer.level_embed")
    enc_layers = count(r"^transformer\.encoder\.layers\.(\d+)\.")
    dec_layers = count(r"^transformer\.decoder\.layers\.(\d+)\.")
    points = shape("transformer.encoder.layers.0.self_attn.attention_weights.weight")[0] // (num_heads * levels)
    box0 = {k.split(".", 4)[4]: v for k, v in state.items() if k.startswith("transformer.decoder.bbox_embed.0.")}
    shared = all(torch.equal(v, state.get(f"transformer.decoder.bbox_embed.{lid}.{k}", v))
                 for lid in range(dec_layers) for k, v in box0.items())
    kwargs = dict(cfg.backbone.kwargs, embed_dim=embed, patch_size=patch, depths=depths,
                  num_heads=heads, window_size=window)
    t = dict(d_model=d, num_heads=num_heads, dim_feedforward=shape("transformer.encoder.layers.0.linear1.weight")[0],
             num_points=points, num_encoder_layers=enc_layers, num_decoder_layers=dec_layers,
             num_queries=shape("transformer.tgt_embed.weight")[0], num_extra_levels=levels - len(outs),
             dropout=0.0, **dict(OFFICIAL_TRANSFORMER_FIELDS, share_box_head=shared))
    name = "upn-large" if (depths, embed, window, enc_layers, dec_layers) == ([2, 2, 18, 2], 192, 12, 6, 6) else "upn-official"
    return UPNConfig(backbone={"model_type": "swin", "kwargs": kwargs, "out_features": outs}, transformer=t,
                     loss=cfg.loss, image=dict(cfg.image.__dict__, **OFFICIAL_IMAGE_FIELDS), name=name)


# -- files ----------------------------------------------------------------------------------------
def read_official_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``checkpoint["model"]`` of an official ``.pth`` (tensors only, ``weights_only=True``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and key errors of every kind for a file that is no checkpoint
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt["model"]
    raise ValueError(f"{path} is not an official UPN checkpoint: expected a dict with a 'model' state dict")


def load_official_checkpoint(path: str | os.PathLike, config: UPNConfig | None = None) -> UPNModel:
    """Build a ``UPNModel`` from an official ``upn_large.pth`` (converted in memory), in eval mode."""
    state = read_official_state(path)
    config = config if config is not None else infer_config(state)
    model = UPNModel(config)
    model.load_state_dict(official_to_ours(state, config), strict=True)  # keys already checked: cannot fail
    return model.eval()


def load_upn_predictor(path_or_name: str | os.PathLike, device: str | torch.device = "cpu",
                       image_config: ImageConfig | None = None) -> UPNPredictor:
    """A ``UPNPredictor`` from an official ``.pth`` file (converted in memory) or from anything
    ``UPNPredictor.from_pretrained`` loads (a converted folder, a bundled name such as ``upn-tiny``)."""
    path = resolve_weights(path_or_name)
    if os.path.isfile(path):
        return UPNPredictor(load_official_checkpoint(path), image_config=image_config, device=device)
    return UPNPredictor.from_pretrained(path, device=device, image_config=image_config)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to_official: bool = False) -> None:
    """official ``.pth`` -> our folder, or with ``to_official`` our folder -> official ``.pth``."""
    if to_official:
        model = UPNModel.from_pretrained(src)
        if model.config.backbone.model_type != "swin":
            raise ValueError(f"{src} is {model.config.name!r} with a {model.config.backbone.model_type!r} backbone: only Swin "
                             "UPNs (upn-large, a converted upn_large.pth) have an official layout")
        state = ours_to_official(model.state_dict(), model.config)
        torch.save({"model": {k: v.contiguous() for k, v in state.items()}}, dst)
    else:
        load_official_checkpoint(src).save_pretrained(dst)


def run(args: argparse.Namespace) -> int:
    """``chatrex convert upn`` (arguments: ``chatrex.cli.convert._upn_arguments``)."""
    convert(args.src, args.dst, to_official=args.to_official)
    print(f"wrote {args.dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m chatrex.convert.upn SRC DST [--to-official]``: ``chatrex convert upn`` itself."""
    from ..cli.main import main as chatrex_main

    return chatrex_main(["convert", "upn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

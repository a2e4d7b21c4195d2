"""Convert the released UPN checkpoint (``upn_large.pth``) to this package's layout and back.

Usage::

    python -m upn.convert upn_large.pth converted/          # official -> safetensors folder
    python -m upn.convert converted/ upn_official.pth --to-official

Both directions use one ordered table of prefix-renaming rules (``key_rules``:
the documentation of the layout) plus a few named special cases:

- ``qkv``: the official Swin fuses q/k/v in one Linear (``attn.qkv``); the
  transformers Swin keeps ``q_proj`` / ``k_proj`` / ``v_proj``. Split / concatenated on dim 0.
- ``box-head aliases``: the official model shares one box MLP between every decoder
  layer and registers it twice (``bbox_embed.{l}`` and ``transformer.decoder.bbox_embed.{l}``),
  so the checkpoint holds 2 x 6 copies. They must be identical; one is kept.
- ``relative_position_index``: a buffer fully determined by the window size; the official
  checkpoint stores it, transformers recomputes it. It is checked, not loaded.
- ``IGNORED_OFFICIAL``: keys the official model carries but never uses in its output
  (``ref_point_head_point`` is multiplied by 0.0). Dropped; written as zeros in reverse.
- ``UNUSED_OURS``: our keys with no official counterpart that never reach an output
  (the transformers ``SwinModel`` final LayerNorm, which ``SwinBackbone`` skips). Filled
  with the LayerNorm identity.

Anything else that is left over raises ``ValueError`` listing the keys: a source key no
rule used, a target key nothing filled, or a shape mismatch.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys

import torch

from .build import OFFICIAL_IMAGE_FIELDS, OFFICIAL_TRANSFORMER_FIELDS, upn_large_config
from .config import UPNConfig
from .modeling import UPNModel

_SWIN_OFF = "backbone.model.backbone."
_SWIN_OURS = "backbone.body.swin."
IGNORED_OFFICIAL = ("transformer.decoder.ref_point_head_point.",)
UNUSED_OURS = ("backbone.body.swin.layernorm.",)


def key_rules(config: UPNConfig) -> list[tuple[str, str]]:
    """Ordered (official prefix, our prefix) pairs; ``{i}`` / ``{j}`` match layer numbers.

    A template ending in "." renames a prefix (the rest of the key is kept); any other
    template must match the whole key. Rules that depend on the number of levels are
    spelled out per level.
    """
    blk = "layers.{i}.blocks.{j}."
    rules = [
        # Swin backbone (official swin.py <-> transformers SwinBackbone)
        (_SWIN_OFF + "patch_embed.proj.", _SWIN_OURS + "embeddings.patch_embeddings.projection."),
        (_SWIN_OFF + "patch_embed.norm.", _SWIN_OURS + "embeddings.norm."),
        (_SWIN_OFF + blk + "norm1.", _SWIN_OURS + "encoder." + blk + "layernorm_before."),
        (_SWIN_OFF + blk + "norm2.", _SWIN_OURS + "encoder." + blk + "layernorm_after."),
        (_SWIN_OFF + blk + "attn.relative_position_bias_table",
         _SWIN_OURS + "encoder." + blk + "attention.relative_position_bias.relative_position_bias_table"),
        (_SWIN_OFF + blk + "attn.proj.", _SWIN_OURS + "encoder." + blk + "attention.o_proj."),
        (_SWIN_OFF + blk + "mlp.", _SWIN_OURS + "encoder." + blk + "mlp."),
        (_SWIN_OFF + "layers.{i}.downsample.", _SWIN_OURS + "encoder.layers.{i}.downsample."),
    ]
    # Per-level output norms: official norm{k} follows stage k (0-based), transformers names stages from 1.
    for stage in config.backbone.out_features:
        k = int(stage.removeprefix("stage")) - 1
        rules.append((f"{_SWIN_OFF}norm{k}.", f"backbone.body.hidden_states_norms.{stage}."))
    # Input projections: the official list holds the backbone levels, then the extra stride-2 levels.
    n_out = len(config.backbone.out_features)
    rules += [(f"input_proj.{lvl}.", f"backbone.input_proj.{lvl}.") for lvl in range(n_out)]
    rules += [(f"input_proj.{n_out + e}.", f"backbone.extra_proj.{e}.")
              for e in range(config.transformer.num_extra_levels)]
    rules += [
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
        ("transformer.decoder.bbox_embed.{i}.", "decoder.bbox_heads.{i}."),
        ("transformer.tgt_embed.", "tgt_embed."),
        ("transformer.enc_output.", "enc_output."),
        ("transformer.enc_output_norm.", "enc_output_norm."),
        ("transformer.enc_out_bbox_embed.", "enc_bbox_head."),
        ("transformer.fine_grained_prompt.weight", "fine_grained_prompt"),
        ("transformer.coarse_grained_prompt.weight", "coarse_grained_prompt"),
    ]
    return rules


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + pattern + ("(?P<rest>.*)$" if template.endswith(".") else "$"))


def _rename(key: str, rules: list, reverse: bool) -> str | None:
    for off, ours in rules:
        src, dst = (ours, off) if reverse else (off, ours)
        m = _compile(src).match(key)
        if m:
            groups = m.groupdict()
            return dst.format(i=groups.get("i"), j=groups.get("j")) + groups.get("rest", "")
    return None


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) int64 Swin lookup index into the (2w-1)^2 bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def expected_state_shapes(config: UPNConfig) -> dict[str, tuple]:
    """Our state-dict keys and shapes for ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = UPNModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_QKV = re.compile(r"^" + re.escape(_SWIN_OFF) + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_OURS_QKV = re.compile(r"^" + re.escape(_SWIN_OURS) + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")
_RPI = re.compile(r"^" + re.escape(_SWIN_OFF) + r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")
_BOX_ALIAS = re.compile(r"^(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.(.*)$")


def _box_canonical(key: str, shared: bool) -> str | None:
    """Official box-head key -> the key that holds its values (None if not a box-head key)."""
    m = _BOX_ALIAS.match(key)
    if not m:
        return None
    return f"transformer.decoder.bbox_embed.{0 if shared else m.group(1)}.{m.group(2)}"


def official_to_ours(state: dict, config: UPNConfig) -> dict[str, torch.Tensor]:
    """Official UPN state dict -> ours for ``config``. Raises ValueError naming unused,
    missing or mis-shaped keys, or differing copies of the shared box head."""
    rules = key_rules(config)
    window = config.backbone.kwargs.get("window_size", 7)
    shared = config.transformer.share_box_head
    out, unused, problems = {}, [], []
    for key, value in state.items():
        if key.startswith(IGNORED_OFFICIAL):
            continue
        if _RPI.match(key):
            if not torch.equal(value.cpu().long(), relative_position_index(window)):
                problems.append(f"{key} is not the standard index for window {window}")
            continue
        canonical = _box_canonical(key, shared)
        if canonical is not None and canonical != key:
            if canonical not in state:
                problems.append(f"{key} is a box-head alias but {canonical} is missing")
            elif not torch.equal(value, state[canonical]):
                problems.append(f"{key} differs from {canonical} (the box head must be shared)")
            continue
        m = _QKV.match(key)
        if m:
            stage, block, kind = m.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{_SWIN_OURS}encoder.layers.{stage}.blocks.{block}.attention.{name}_proj.{kind}"] = part.clone()
            continue
        new = _rename(key, rules, reverse=False)
        if new is None:
            unused.append(key)
        else:
            out[new] = value
    expected = expected_state_shapes(config)
    for key in expected:
        if key.startswith(UNUSED_OURS) and key not in out:
            out[key] = torch.ones(expected[key]) if key.endswith("weight") else torch.zeros(expected[key])
    _check_complete(out, expected, unused, problems, "official key(s) no rule maps")
    return out


def ours_to_official(state: dict, config: UPNConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the official layout (every official key, aliases and ignored ones
    included, so the official ``load_state_dict(strict=True)`` accepts it)."""
    rules = key_rules(config)
    t = config.transformer
    d = t.d_model
    out, unused, qkv = {}, [], {}
    for key, value in state.items():
        if key.startswith(UNUSED_OURS):
            continue
        m = _OURS_QKV.match(key)
        if m:
            stage, block, name, kind = m.groups()
            qkv.setdefault((stage, block, kind), {})[name] = value
            continue
        new = _rename(key, rules, reverse=True)
        if new is None:
            unused.append(key)
            continue
        out[new] = value
        canonical = _box_canonical(new, t.share_box_head)
        if canonical is not None:
            layers = range(t.num_decoder_layers) if t.share_box_head else [int(new.split(".")[3])]
            rest = new.split(".", 4)[4]
            for lid in layers:
                out[f"transformer.decoder.bbox_embed.{lid}.{rest}"] = value
                out[f"bbox_embed.{lid}.{rest}"] = value
    for (stage, block, kind), parts in sorted(qkv.items()):
        if set(parts) != set("qkv"):
            unused += [f"{_SWIN_OURS}encoder.layers.{stage}.blocks.{block}.attention.{n}_proj.{kind}" for n in parts]
            continue
        out[f"{_SWIN_OFF}layers.{stage}.blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in "qkv"], 0)
        if kind == "weight":
            window = config.backbone.kwargs.get("window_size", 7)
            out[f"{_SWIN_OFF}layers.{stage}.blocks.{block}.attn.relative_position_index"] = relative_position_index(window)
    for lid in range(2):  # the unused ref_point_head_point MLP(d, d, d, 2)
        out[f"{IGNORED_OFFICIAL[0]}layers.{lid}.weight"] = torch.zeros(d, d)
        out[f"{IGNORED_OFFICIAL[0]}layers.{lid}.bias"] = torch.zeros(d)
    if unused:
        raise ValueError(f"{len(unused)} key(s) of ours have no official name: {', '.join(sorted(unused)[:20])}")
    return out


def _check_complete(out: dict, expected: dict, unused: list, problems: list, unused_label: str) -> None:
    missing = sorted(set(expected) - set(out))
    extra = sorted(set(out) - set(expected))
    shapes = [f"{k}: {tuple(out[k].shape)} != {expected[k]}" for k in sorted(set(out) & set(expected))
              if tuple(out[k].shape) != expected[k]]
    msgs = []
    if unused:
        msgs.append(f"{len(unused)} {unused_label}: {', '.join(sorted(unused)[:20])}")
    if missing:
        msgs.append(f"{len(missing)} key(s) of ours not filled: {', '.join(missing[:20])}")
    if extra:
        msgs.append(f"{len(extra)} converted key(s) the model does not have: {', '.join(extra[:20])}")
    if shapes:
        msgs.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:20])}")
    msgs += problems
    if msgs:
        raise ValueError("cannot convert the UPN checkpoint: " + " | ".join(msgs))


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
    embed, _, patch, _ = shape(_SWIN_OFF + "patch_embed.proj.weight")
    stages = count(re.escape(_SWIN_OFF) + r"layers\.(\d+)\.blocks\.0\.norm1\.weight")
    depths = [count(re.escape(_SWIN_OFF) + rf"layers\.{s}\.blocks\.(\d+)\.norm1\.weight") for s in range(stages)]
    heads = [shape(f"{_SWIN_OFF}layers.{s}.blocks.0.attn.relative_position_bias_table")[1] for s in range(stages)]
    table = shape(f"{_SWIN_OFF}layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window = (math.isqrt(table) + 1) // 2
    outs = [f"stage{k + 1}" for k in range(stages) if f"{_SWIN_OFF}norm{k}.weight" in state]
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


def read_official_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``checkpoint["model"]`` of an official ``.pth`` (tensors only, ``weights_only=True``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt["model"]
    raise ValueError(f"{path} is not an official UPN checkpoint: expected a dict with a 'model' state dict")


def load_official_checkpoint(path: str | os.PathLike, config: UPNConfig | None = None) -> UPNModel:
    """Build a ``UPNModel`` from an official ``upn_large.pth`` (converted in memory), in eval mode."""
    state = read_official_state(path)
    config = config if config is not None else infer_config(state)
    model = UPNModel(config)
    model.load_state_dict_checked(official_to_ours(state, config))
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, to_official: bool = False) -> None:
    """official ``.pth`` -> our folder, or with ``to_official`` our folder -> official ``.pth``."""
    if to_official:
        model = UPNModel.from_pretrained(src)
        state = ours_to_official(model.state_dict(), model.config)
        torch.save({"model": {k: v.contiguous() for k, v in state.items()}}, dst)
    else:
        load_official_checkpoint(src).save_pretrained(dst)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official upn_large.pth (or, with --to-official, a converted folder)")
    parser.add_argument("dst", help="output folder (or, with --to-official, the .pth to write)")
    parser.add_argument("--to-official", action="store_true", help="convert our folder back to the official layout")


def run(args: argparse.Namespace) -> int:
    convert(args.src, args.dst, to_official=args.to_official)
    print(f"wrote {args.dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upn.convert", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as err:
        print(f"upn.convert: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

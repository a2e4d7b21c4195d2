"""upn.convert: official <-> ours key mapping, strict refusals, loading paths, CLI."""
import pytest
import torch

from chatrex.cli.main import main as chatrex_main
from upn import UPNModel, UPNPredictor, get_config
from upn.convert import expected_state_shapes, infer_config, key_rules, official_to_ours, ours_to_official
from upn.convert import main as convert_main

from .official_parity import load_fixture, official_state


@pytest.fixture(scope="module")
def small_official():
    """The CI fixture's official layout (Swin-T, 3+3 layers, 300 queries) with synthetic weights."""
    meta, _ = load_fixture()
    state = official_state(meta["official_state_shapes"])
    return state, infer_config(state)


def _save_official(state, path):
    torch.save({"model": state}, path)
    return path


def test_round_trip_is_exact(small_official):
    state, config = small_official
    ours = official_to_ours(state, config)
    back = ours_to_official(ours, config)
    ignored = [k for k in state if "ref_point_head_point" in k]
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state if k not in ignored)
    assert all(not back[k].any() for k in ignored)  # never used, written as zeros
    # and ours -> official -> ours is the identity as well
    again = official_to_ours(back, config)
    assert set(again) == set(ours) and all(torch.equal(again[k], ours[k]) for k in ours)


def test_infer_config_reads_the_sizes(small_official):
    _, config = small_official
    t = config.transformer
    assert config.backbone.kwargs["embed_dim"] == 96 and config.backbone.kwargs["window_size"] == 7
    assert (t.num_encoder_layers, t.num_decoder_layers, t.num_queries, t.class_head, t.share_box_head) == \
        (3, 3, 300, "dot", True)


def test_full_size_layout_has_the_701_official_keys():
    cfg = get_config("upn-large")
    fake = {k: torch.zeros(s) for k, s in expected_state_shapes(cfg).items()}
    official = ours_to_official(fake, cfg)
    assert len(official) == 701
    box_keys = [k for k in official if k.startswith(("bbox_embed.", "transformer.decoder.bbox_embed."))]
    assert len(box_keys) == 2 * 6 * 6  # one shared head, registered twice per layer, 6 tensors


@pytest.mark.parametrize("mutation, message", [
    ("extra", "no rule maps: transformer.unexpected.weight"),
    ("missing", "not filled: tgt_embed.weight"),
    ("alias", "differs from transformer.decoder.bbox_embed.0.layers.0.weight"),
    ("shape", "shape mismatch"),
    ("qkv_missing", "not filled"),
])
def test_refuses_and_names_the_keys(small_official, mutation, message):
    state, config = small_official
    bad = dict(state)
    if mutation == "extra":
        bad["transformer.unexpected.weight"] = torch.zeros(3)
    elif mutation == "missing":
        del bad["transformer.tgt_embed.weight"]
    elif mutation == "alias":
        bad["bbox_embed.2.layers.0.weight"] = bad["bbox_embed.2.layers.0.weight"] + 1
    elif mutation == "shape":
        bad["transformer.level_embed"] = torch.zeros(4, 256)
    else:
        del bad["backbone.model.backbone.layers.0.blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match=message):
        official_to_ours(bad, config)


def test_rules_are_unambiguous_in_both_directions(small_official):
    _, config = small_official
    rules = key_rules(config)
    assert len({o for o, _ in rules}) == len(rules) and len({u for _, u in rules}) == len(rules)


@pytest.mark.slow
def test_pth_loads_directly_and_converts_to_a_folder(small_official, tmp_path):
    state, config = small_official
    pth = _save_official(state, tmp_path / "upn_small.pth")
    direct = UPNPredictor.from_pretrained(str(pth)).model
    assert convert_main([str(pth), str(tmp_path / "py")]) == 0
    assert chatrex_main(["convert", "upn", str(pth), str(tmp_path / "cli")]) == 0
    for folder in ("py", "cli"):
        loaded = UPNModel.from_pretrained(tmp_path / folder)
        assert loaded.config.to_dict() == direct.config.to_dict()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), direct.state_dict().values()))
    # back to the official layout through the CLI
    assert chatrex_main(["convert", "upn", str(tmp_path / "cli"), str(tmp_path / "back.pth"), "--to-official"]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    assert set(back) == set(state)


def test_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    pth = tmp_path / "bad.pth"
    torch.save({"weights": {}}, pth)
    assert chatrex_main(["convert", "upn", str(pth), str(tmp_path / "out")]) == 2
    assert "expected a dict with a 'model' state dict" in capsys.readouterr().err


def test_strict_folder_load_names_missing_keys(small_official, tmp_path):
    state, config = small_official
    model = UPNModel(config)
    model.load_state_dict_checked(official_to_ours(state, config))
    sd = model.state_dict()
    del sd["tgt_embed.weight"]
    with pytest.raises(RuntimeError, match="tgt_embed.weight"):
        UPNModel(config).load_state_dict_checked(sd)


def test_upn_large_has_the_official_parameter_count():
    # official_chatrex.md section B.2: 217,638,460 unique parameters. Ours lacks only the unused
    # ref_point_head_point MLP (2 x (256*256 + 256)) and adds the transformers Swin's unused final LayerNorm.
    with torch.device("meta"):
        model = UPNModel(get_config("upn-large"))
    used = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.body.swin.layernorm."))
    assert used + 2 * (256 * 256 + 256) == 217_638_460

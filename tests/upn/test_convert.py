"""chatrex.convert.upn: official <-> ours key mapping, strict refusals, loading paths, CLI."""
import pytest
import torch

from chatrex.cli.main import main as chatrex_main
from chatrex.convert.upn import (
    expected_state_shapes,
    infer_config,
    key_rules,
    load_upn_predictor,
    official_to_ours,
    ours_to_official,
)
from chatrex.convert.upn import main as convert_main
from upn import UPNModel, UPNPredictor, get_config

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
    ("extra", "unmapped 1 key\\(s\\): transformer.unexpected.weight"),
    ("missing", "missing 1 key\\(s\\): tgt_embed.weight"),
    ("alias", "differs from transformer.decoder.bbox_embed.0.layers.0.weight"),
    ("shape", "wrong shape 1 key\\(s\\): level_embed \\(4, 256\\) != "),
    ("qkv_missing", "missing 3 key\\(s\\): backbone.body.swin.encoder.layers.0.blocks.1.attention.k_proj.weight"),
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
    with pytest.raises(ValueError, match="^official UPN checkpoint: ") as info:
        official_to_ours(bad, config)
    assert info.match(message)


def test_ours_without_an_official_name_is_refused(small_official):
    state, config = small_official
    ours = official_to_ours(state, config)
    ours["decoder.unknown.weight"] = torch.zeros(2)
    del ours["backbone.body.swin.encoder.layers.0.blocks.0.attention.v_proj.bias"]  # q and k alone cannot be fused
    with pytest.raises(ValueError, match=r"unmapped 3 key\(s\): backbone\.body\.swin\.encoder\.layers\.0\.blocks\.0\."
                                         r"attention\.k_proj\.bias, \S+q_proj\.bias, decoder\.unknown\.weight$"):
        ours_to_official(ours, config)


def test_rules_are_unambiguous_in_both_directions(small_official):
    _, config = small_official
    rules = key_rules(config).table
    assert len({o for o, _ in rules}) == len(rules) and len({u for _, u in rules}) == len(rules)


@pytest.mark.slow
def test_pth_loads_directly_and_converts_to_a_folder(small_official, tmp_path):
    state, config = small_official
    pth = _save_official(state, tmp_path / "upn_small.pth")
    direct = load_upn_predictor(str(pth)).model
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


def test_upn_predictor_refuses_a_pth_and_names_both_ways_out(small_official, tmp_path):
    # upn imports nothing from chatrex, so it cannot convert: it says how to.
    pth = _save_official(small_official[0], tmp_path / "upn_large.pth")
    with pytest.raises(ValueError) as info:
        UPNPredictor.from_pretrained(pth)
    assert f"chatrex convert upn {pth} OUT/" in str(info.value)
    assert f"chatrex.convert.upn.load_upn_predictor({str(pth)!r})" in str(info.value)


def test_load_upn_predictor_takes_folders_and_bundled_names_too():
    assert load_upn_predictor("upn-tiny").model.config.name == "upn-tiny"


def test_module_cli_is_the_chatrex_command(tmp_path, capsys):
    # python -m chatrex.convert.upn runs chatrex convert upn: same checks, same error line
    assert convert_main([str(tmp_path / "nothing.pth"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("chatrex convert: error: ")


def test_upn_large_has_the_official_parameter_count():
    # official_chatrex.md section B.2: 217,638,460 unique parameters. Ours lacks only the unused
    # ref_point_head_point MLP (2 x (256*256 + 256)) and adds the transformers Swin's unused final LayerNorm.
    with torch.device("meta"):
        model = UPNModel(get_config("upn-large"))
    used = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.body.swin.layernorm."))
    assert used + 2 * (256 * 256 + 256) == 217_638_460


def test_a_file_that_is_no_checkpoint_is_a_value_error(tmp_path):
    from chatrex.convert.upn import read_official_state

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="junk.pth is not a PyTorch checkpoint"):
        read_official_state(junk)


def test_only_swin_upns_convert_back_to_the_official_layout(tmp_path):
    from chatrex.convert.upn import convert
    from upn import UPNModel, get_config

    UPNModel(get_config("upn-tiny")).save_pretrained(tmp_path / "tiny")
    with pytest.raises(ValueError, match="only Swin UPNs .* have an official layout"):
        convert(tmp_path / "tiny", tmp_path / "out.pth", to_official=True)

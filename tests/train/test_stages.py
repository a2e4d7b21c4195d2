import pytest

from chatrex import ChatRexForConditionalGeneration, get_preset_config
from train.stages import apply_stage, build_param_groups, format_counts


@pytest.fixture(scope="module")
def model():
    return ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random"))


def _trainable_modules(model):
    m = model.model
    named = {
        "vision_low": m.vision_low, "vision_high": m.vision_high, "mm_projector": m.mm_projector,
        "mm_object_projector": m.mm_object_projector, "embed_tokens": model.get_input_embeddings(),
        "lm_head": model.lm_head, "llm_layers": m.language_model.layers, "llm_norm": m.language_model.norm,
    }
    return {k for k, mod in named.items() if all(p.requires_grad for p in mod.parameters())}, {
        k for k, mod in named.items() if not any(p.requires_grad for p in mod.parameters())
    }


def test_stage1_trains_only_projectors_and_embeddings(model):
    apply_stage(model, 1)
    trainable, frozen = _trainable_modules(model)
    assert trainable == {"mm_projector", "mm_object_projector", "embed_tokens", "lm_head"}
    assert frozen == {"vision_low", "vision_high", "llm_layers", "llm_norm"}


@pytest.mark.parametrize("stage", [2, 3])
def test_stages_2_and_3_train_everything(model, stage):
    apply_stage(model, 1)
    counts = apply_stage(model, stage)
    assert all(p.requires_grad for p in model.parameters())
    assert sum(c[0] for c in counts.values()) == sum(p.numel() for p in model.parameters())


def test_counts_table(model):
    counts = apply_stage(model, 1)
    assert counts["vision"][0] == 0 and counts["vision"][1] > 0
    assert counts["projectors"][0] == counts["projectors"][1]
    table = format_counts(counts)
    assert "projectors" in table and "all" in table.splitlines()[-1]


def test_param_groups_per_module_lrs(model):
    apply_stage(model, 2)
    groups = build_param_groups(model, {"default": 1e-4, "projectors": 1e-3, "vision": 5e-5}, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["projectors"]["lr"] == 1e-3 and by_name["vision"]["lr"] == 5e-5 and by_name["llm"]["lr"] == 1e-4
    assert by_name["llm/no_decay"]["weight_decay"] == 0.0 and by_name["llm"]["weight_decay"] == 0.1
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    apply_stage(model, 1)
    names = {g["name"] for g in build_param_groups(model, {"default": 1e-4})}
    assert names == {"embeddings", "projectors", "projectors/no_decay"}
    with pytest.raises(ValueError, match="unknown module groups"):
        build_param_groups(model, {"decoder": 1e-4})
    with pytest.raises(ValueError, match="stage must be one of"):
        apply_stage(model, 4)


def test_stage1_trains_the_pointer_head_with_the_projectors():
    model = ChatRexForConditionalGeneration(get_preset_config("chatrex-tiny-random", object_pointer_head=True))
    apply_stage(model, 1)
    assert all(p.requires_grad for p in model.object_pointer.parameters())
    assert not any(p.requires_grad for p in model.model.language_model.layers.parameters())
    names = {g["name"] for g in build_param_groups(model, {"default": 1e-3})}
    assert names == {"projectors", "projectors/no_decay", "embeddings"}

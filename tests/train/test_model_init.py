"""What ``model.init`` names: a bundled model's trained weights (``chatrex-tiny``), a preset's
random ones (``chatrex-tiny-scratch``), or a folder; and what a run's ``final/`` carries
along (the starting model's UPN) or keeps quiet about (expected tied-weight messages)."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open

from chatrex import get_preset_config
from chatrex.predictor import BUNDLED_DIR, ChatRexPredictor, bundled_models
from chatrex.presets import PRESETS
from train.checkpointing import save_pretrained_atomic
from train.config import load_config
from train.library_messages import _ExpectedSharedTensors, expected_shared_tensors, tied_parameter_names
from train.model_loading import init_folder, load_model_and_processor, upn_folder
from train.trainer import train

from .conftest import tiny_config

BUNDLE = BUNDLED_DIR / "chatrex-tiny"
PARAM = "model.mm_projector.0.weight"


def _bundled_tensor(name: str) -> torch.Tensor:
    with safe_open(str(BUNDLE / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name)


def test_bundled_name_loads_the_trained_bundle():
    cfg = load_config(None, ["model.init=chatrex-tiny", "stage=3"])
    assert cfg.model.tokenizer is None  # no tokenizer needed: the bundle has one
    model, processor = load_model_and_processor(cfg.model.init, cfg.model.tokenizer, cfg.model.config_overrides)
    stored = _bundled_tensor(PARAM)
    assert stored.dtype == torch.float16  # the bundle stores fp16 ...
    loaded = dict(model.named_parameters())[PARAM]
    assert loaded.dtype == torch.float32  # ... and training gets fp32 master weights of the same values
    assert torch.equal(loaded, stored.float())
    bundled = ChatRexPredictor.from_pretrained("chatrex-tiny").processor
    assert processor.tokenizer.get_vocab() == bundled.tokenizer.get_vocab()
    assert processor.num_image_tokens == bundled.num_image_tokens
    assert upn_folder("chatrex-tiny") == BUNDLE / "upn"


def test_scratch_preset_is_the_bundled_architecture_with_random_weights():
    model, _ = load_model_and_processor("chatrex-tiny-scratch", tokenizer=str(BUNDLE))
    param = dict(model.named_parameters())[PARAM]
    stored = _bundled_tensor(PARAM)
    assert param.shape == stored.shape and not torch.allclose(param, stored.float(), atol=1e-3)
    assert init_folder("chatrex-tiny-scratch") is None and upn_folder("chatrex-tiny-scratch") is None
    with pytest.raises(ValueError, match="preset with random weights; set model.tokenizer"):
        load_model_and_processor("chatrex-tiny-scratch")


def test_no_preset_is_named_like_a_bundled_model():
    assert "chatrex-tiny" in bundled_models()
    assert not set(PRESETS) & set(bundled_models())
    with pytest.raises(ValueError, match="'chatrex-tiny' is a bundled trained model, not a preset"):
        get_preset_config("chatrex-tiny")


def test_unknown_init_lists_presets_and_bundled_models(records_path):
    with pytest.raises(ValueError) as err:
        load_model_and_processor("chatrex-huge")
    message = str(err.value)
    assert "'chatrex-huge'" in message and "chatrex-tiny-scratch" in message and "chatrex-7b" in message
    assert "bundled model (chatrex-tiny: trained weights)" in message
    # The config check says the same before anything loads (python -m train.chatrex prints it as "error: ...").
    with pytest.raises(ValueError, match=r"not a folder, a bundled model \(chatrex-tiny: trained weights\) or a preset \(.*chatrex-tiny-scratch"):
        load_config(None, ["model.init=chatrex-huge", f"data.train=[{records_path}]"]).validate()
    with pytest.raises(ValueError, match="'chatrex-tiny-scratch' is a preset with random weights; set model.tokenizer"):
        load_config(None, ["model.init=chatrex-tiny-scratch", f"data.train=[{records_path}]"]).validate()
    load_config(None, ["model.init=chatrex-tiny", f"data.train=[{records_path}]"]).validate()  # the bundle needs no tokenizer


@pytest.mark.slow
def test_final_carries_the_starting_models_upn(tmp_path, tiny_bundle_dir, tiny_tokenizer_dir, records_path):
    cfg = tiny_config(records_path, "null", str(tmp_path / "run"), stage=3, **{"model.init": str(tiny_bundle_dir), "train.max_steps": 1})
    final = train(cfg).final_dir
    upn = tmp_path / "run" / "final" / "upn"
    assert (upn / "model.safetensors").read_bytes() == (tiny_bundle_dir / "upn" / "model.safetensors").read_bytes()
    assert ChatRexPredictor.from_pretrained(final).upn is not None
    # A run that starts from a preset has no UPN to carry.
    train(tiny_config(records_path, tiny_tokenizer_dir, str(tmp_path / "preset"), **{"train.max_steps": 1}))
    assert (tmp_path / "preset" / "final" / "config.json").is_file() and not (tmp_path / "preset" / "final" / "upn").exists()


def test_save_pretrained_atomic_copies_the_upn(tmp_path, tiny_bundle_dir):
    model, processor = load_model_and_processor(str(tiny_bundle_dir))
    out = save_pretrained_atomic(model, processor, str(tmp_path / "final"), upn=upn_folder(str(tiny_bundle_dir)))
    assert ChatRexPredictor.from_pretrained(out).upn is not None
    bare = save_pretrained_atomic(model, processor, str(tmp_path / "bare"))
    assert ChatRexPredictor.from_pretrained(bare).upn is None


def _shared_tensor_warning(names) -> logging.LogRecord:
    return logging.LogRecord("accelerate.utils.other", logging.WARNING, __file__, 1,
                             f"[RANK 0] Removed shared tensor {names} while saving. This should be OK, but check by verifying "
                             "that you don't receive any warning while reloading", None, None)


def test_only_expected_shared_tensors_are_silenced():
    model, _ = load_model_and_processor("chatrex-tiny")
    tied = tied_parameter_names(model)
    assert "lm_head.weight" in tied and len(tied) == 2  # the bundle ties its input and output embeddings
    quiet = _ExpectedSharedTensors(tied)
    assert not quiet.filter(_shared_tensor_warning({"lm_head.weight"}))
    assert not quiet.filter(_shared_tensor_warning({"module.lm_head.weight"}))  # DDP's prefix
    assert quiet.filter(_shared_tensor_warning({"lm_head.weight", "model.mm_projector.0.weight"}))
    assert quiet.filter(logging.LogRecord("accelerate.utils.other", logging.WARNING, __file__, 1, "another warning", None, None))
    assert tied_parameter_names(load_model_and_processor("chatrex-tiny-scratch", str(BUNDLE))[0]) == tied


def test_the_filter_is_removed_after_saving(caplog):
    logger = logging.getLogger("accelerate.utils.other")
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        with expected_shared_tensors(frozenset({"lm_head.weight"})):
            logger.warning("Removed shared tensor {'lm_head.weight'} while saving.")
        logger.warning("Removed shared tensor {'lm_head.weight'} while saving.")
    assert len(caplog.records) == 1 and not logger.filters

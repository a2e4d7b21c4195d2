import json

import pytest
import torch

from chatrex import ChatRexProcessor
from chatrex.processing_chatrex import IGNORE_INDEX

BOXES = [[10, 10, 50, 50], [60, 20, 120, 90]]


@pytest.fixture
def proc(tiny_model):
    return tiny_model[1]


def _decode_labelled(proc, batch, row=0):
    labels = batch["labels"][row]
    return proc.tokenizer.decode(labels[labels != IGNORE_INDEX])


def test_prompt_layout_and_expansion(proc, rgb_image):
    batch = proc(images=[rgb_image], conversations=["find the red car"], boxes=[BOXES], add_generation_prompt=True)
    text = proc.tokenizer.decode(batch["input_ids"][0])
    n = proc.num_image_tokens
    expected = "<|im_start|>user\n" + "<image>" * n + "\n<obj0><objfeat><obj1><objfeat>\nfind the red car<|im_end|>\n<|im_start|>assistant\n"
    assert text == expected


def test_labels_only_on_answers(proc, rgb_image):
    conv = [
        {"from": "human", "value": "find the red car"},
        {"from": "gpt", "value": "<ground>red car</ground><objects><obj1></objects>"},
        {"from": "human", "value": "what colour is the boat?"},
        {"from": "gpt", "value": "it is yellow."},
    ]
    batch = proc(images=[rgb_image], conversations=[conv], boxes=[BOXES])
    assert _decode_labelled(proc, batch) == "<ground>red car</ground><objects><obj1></objects><|im_end|>it is yellow.<|im_end|>"
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    kept = labels != IGNORE_INDEX
    assert torch.equal(ids[kept], labels[kept])
    assert not kept[ids == proc.token_ids["<image>"]].any()


def test_right_padding_for_training_left_for_generation(proc, rgb_image):
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "it is yellow."}], "a much longer question about the red car and the trees"]
    train = proc(images=[rgb_image, rgb_image], conversations=[convs[0], [{"role": "user", "content": convs[1]}, {"role": "assistant", "content": "ok"}]])
    assert train["attention_mask"][:, 0].all() and not train["attention_mask"][0, -1]
    assert (train["labels"][0][train["attention_mask"][0] == 0] == IGNORE_INDEX).all()
    gen = proc(images=[rgb_image, rgb_image], conversations=["hi", convs[1]], add_generation_prompt=True)
    assert gen["attention_mask"][:, -1].all() and not gen["attention_mask"][0, 0]


def test_text_only_and_mixed_batches(proc, rgb_image):
    batch = proc(images=[None, rgb_image], conversations=["hi", "find the red car"], boxes=[None, BOXES])
    assert batch["pixel_values_low"].shape[0] == 1 and len(batch["boxes"]) == 1
    assert (batch["input_ids"][0] == proc.token_ids["<image>"]).sum() == 0
    text_only = proc(conversations=["hi"])
    assert "pixel_values_low" not in text_only


def test_bad_inputs(proc, rgb_image):
    with pytest.raises(ValueError, match="must not contain"):
        proc(images=[rgb_image], conversations=["look at <image> please"])
    with pytest.raises(ValueError, match="without an image"):
        proc(images=[None], conversations=["hi"], boxes=[BOXES])
    with pytest.raises(ValueError, match="2 images for 1 conversations"):
        proc(images=[rgb_image, rgb_image], conversations=["hi"])
    with pytest.raises(ValueError, match="unknown role"):
        proc(images=[rgb_image], conversations=[[{"role": "robot", "content": "hi"}]])
    with pytest.raises(ValueError, match="top-100"):
        proc(images=[rgb_image], conversations=["hi"], boxes=[[[0, 0, 5, 5]] * 101])
    with pytest.raises(ValueError, match="already ends with an answer"):
        proc(images=[rgb_image], conversations=[[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]], add_generation_prompt=True)


def test_denormalize_inverts(proc, rgb_image):
    batch = proc(images=[rgb_image], conversations=["q"], boxes=[BOXES])
    back = proc.denormalize_boxes(batch["boxes"][0], rgb_image.size)
    assert torch.allclose(back, torch.tensor(BOXES, dtype=torch.float32), rtol=0, atol=1e-4)


def test_from_pretrained_missing_config(tmp_path):
    with pytest.raises(ValueError, match="processor_config.json"):
        ChatRexProcessor.from_pretrained(tmp_path)


def test_real_qwen_tokenizer_in_processor(qwen_tokenizer_dir, rgb_image):
    from transformers import AutoTokenizer

    from chatrex import get_preset_config

    proc = ChatRexProcessor.from_model_config(get_preset_config("chatrex-tiny-random"), AutoTokenizer.from_pretrained(qwen_tokenizer_dir))
    conv = [{"role": "user", "content": "find the red car"}, {"role": "assistant", "content": "<ground>red car</ground><objects><obj1></objects>"}]
    batch = proc(images=[rgb_image], conversations=[conv], boxes=[BOXES])
    labelled = _decode_labelled(proc, batch)
    # This tokenizer ships a Qwen3 template, which writes an empty think block into the answer
    # turn: the model must produce it after the generation prompt, so it carries loss too.
    assert labelled.endswith("<ground>red car</ground><objects><obj1></objects><|im_end|>")
    assert "find the red car" not in labelled and "user" not in labelled


def _same_batch(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "boxes":
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
        else:
            assert torch.equal(a[key], b[key]), key


def _auto_matches_direct(folder, rgb_image, reference=None):
    """AutoProcessor resolves the folder to a ChatRexProcessor (through the registration in
    processing_chatrex) that builds the same batch as ChatRexProcessor.from_pretrained."""
    from transformers import AutoProcessor

    auto = AutoProcessor.from_pretrained(folder)
    assert type(auto) is ChatRexProcessor
    offline = AutoProcessor.from_pretrained(folder, local_files_only=True, cache_dir=str(folder))
    assert offline.to_dict() == auto.to_dict()
    direct = ChatRexProcessor.from_pretrained(folder)
    assert auto.to_dict() == direct.to_dict()
    kwargs = dict(images=[rgb_image, None], conversations=["find the red car", "hi"], boxes=[BOXES, None], add_generation_prompt=True)
    batch = auto(**kwargs)
    _same_batch(batch, direct(**kwargs))
    if reference is not None:
        _same_batch(batch, reference(**kwargs))


def test_auto_processor_round_trips_a_saved_processor_folder(proc, tmp_path, rgb_image):
    proc.save_pretrained(tmp_path)  # a processor alone: no config.json beside it
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved == json.loads(json.dumps(proc.to_dict())) and set(saved) == {"processor_class", "num_image_tokens", "image_processor", "prompt_style", "proposals"}
    _auto_matches_direct(tmp_path, rgb_image, reference=proc)


def test_auto_processor_loads_a_model_folder_and_the_bundled_model(tiny_bundle_dir, rgb_image):
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from chatrex import ChatRexConfig
    from chatrex.predictor import BUNDLED_DIR

    assert PROCESSOR_MAPPING[ChatRexConfig] is ChatRexProcessor
    _auto_matches_direct(tiny_bundle_dir, rgb_image)
    _auto_matches_direct(BUNDLED_DIR / "chatrex-tiny", rgb_image)


def test_processor_mixin_without_changing_the_class_contract(proc, tmp_path):
    from transformers import ProcessorMixin

    assert isinstance(proc, ProcessorMixin)
    assert '"num_image_tokens"' in repr(proc)  # ProcessorMixin's repr, through to_dict
    proc.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="use_fast"):
        ChatRexProcessor.from_pretrained(tmp_path, use_fast=False)


def test_from_pretrained_names_an_argument_it_does_not_know(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="num_boxes"):
        ChatRexProcessor.from_pretrained(tmp_path, num_boxes=3)

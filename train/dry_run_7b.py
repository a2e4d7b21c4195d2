"""Inputs of the 7B recipe's dry run (``DRY_RUN=1 train/recipes/chatrex_7b.sh``).

    python -m train.dry_run_7b --data DIR --parts DIR

* ``--data``: the tiny source fixtures of ``tests/datasets/tiny_sources.py``, laid out where
  the recipe looks for the real datasets under ``$DATA`` (COCO, Objects365, LVIS, the refer
  folders of RefCOCO/+/g, Rexverse, ALLaVA, LLaVA, Visual Genome), so the recipe runs its real
  commands on them. The refer splits are re-labelled so that the evaluation splits hold COCO
  images 73 and 139 (and LVIS minival image 139) while image 42 stays for training: the leakage
  filter then removes records and leaves some.
* ``--parts``: tiny random parts for ``chatrex convert compose``: a CLIP folder, an open_clip
  ConvNeXt (timm ``convnext_atto``) and a Qwen2 causal LM with a plain ChatML BPE tokenizer.

Needs the repository's ``tests`` package (run from the repository root). Imports no ``chatrex``
module, so it starts in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys

SEED = 0
# Refer splits of the fixture refs, re-labelled by COCO image id (see the module docstring).
UNC_SPLITS = {42: "train", 73: "testA", 139: "testB"}
UMD_SPLITS = {42: "train", 73: "val", 139: "test"}
LVIS_MINIVAL_IMAGES = {139}


def _merge_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    shutil.rmtree(src)


def _refer(tiny, root: str, dataset: str, split_by: str, splits: dict) -> None:
    folder = os.path.join(root, dataset)
    written = tiny.write_refer(os.path.join(root, ".tmp", dataset))
    os.makedirs(folder, exist_ok=True)
    shutil.copy(os.path.join(written["folder"], "instances.json"), folder)
    refs = [dict(ref, split=splits[ref["image_id"]]) for ref in written["refs"]]
    with open(os.path.join(folder, f"refs({split_by}).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)


def write_sources(data: str) -> None:
    """The fixtures under ``data`` in the recipe's default layout."""
    from tests.datasets import tiny_sources as tiny

    tmp = os.path.join(data, ".tmp")
    coco = os.path.join(data, "coco")
    os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
    # COCO instances as train2017 (its crowd region included).
    written = tiny.write_coco(os.path.join(tmp, "coco"))
    os.replace(written["ann"], os.path.join(coco, "annotations", "instances_train2017.json"))
    _merge_tree(written["images"], os.path.join(coco, "train2017"))
    # LVIS v1 as the training file; minival = the same file restricted to LVIS_MINIVAL_IMAGES.
    written = tiny.write_lvis(os.path.join(tmp, "lvis"))
    _merge_tree(written["images"], coco)
    os.makedirs(os.path.join(data, "lvis"), exist_ok=True)
    os.replace(written["ann"], os.path.join(data, "lvis", "lvis_v1_train.json"))
    minival = dict(written["data"])
    minival["images"] = [i for i in minival["images"] if i["id"] in LVIS_MINIVAL_IMAGES]
    minival["annotations"] = [a for a in minival["annotations"] if a["image_id"] in LVIS_MINIVAL_IMAGES]
    with open(os.path.join(data, "lvis", "lvis_v1_minival.json"), "w") as f:
        json.dump(minival, f)
    # RefCOCO / RefCOCO+ (UNC) and RefCOCOg (UMD) refer folders, images in coco/train2014.
    refer = os.path.join(data, "refer")
    for dataset, split_by, splits in (("refcoco", "unc", UNC_SPLITS), ("refcoco+", "unc", UNC_SPLITS), ("refcocog", "umd", UMD_SPLITS)):
        _refer(tiny, refer, dataset, split_by, splits)
    _merge_tree(os.path.join(refer, ".tmp", "refcoco", "train2014"), os.path.join(coco, "train2014"))
    shutil.rmtree(os.path.join(refer, ".tmp"))
    # Objects365.
    written = tiny.write_objects365(os.path.join(tmp, "o365"))
    o365 = os.path.join(data, "objects365")
    os.makedirs(o365, exist_ok=True)
    os.replace(written["ann"], os.path.join(o365, "zhiyuan_objv2_train.json"))
    _merge_tree(written["images"], os.path.join(o365, "train"))
    # Rexverse: one image TSV, the fixture annotations under both public annotation names.
    rex = os.path.join(data, "rexverse")
    written = tiny.write_rexverse(os.path.join(tmp, "rexverse"))
    os.makedirs(rex, exist_ok=True)
    for src, dst in ((written["images"], "0_500000_image.tsv"), (written["ann"], "0_500000_referring.annotations.tsv"),
                     (written["ann"], "0_500000_one_sentence.annotation.tsv")):
        for suffix in ("", ".lineidx"):
            shutil.copy(src + suffix, os.path.join(rex, dst + suffix))
    # LLaVA-style JSON (a COCO image, a GQA image, a text-only row, a second image root) as
    # every conversation file of the recipe; its image roots become the LLaVA and ALLaVA roots.
    written = tiny.write_llava(os.path.join(tmp, "llava"))
    llava, allava = os.path.join(data, "llava"), os.path.join(data, "allava")
    for root in (llava, allava):
        shutil.copytree(written["images"], root, dirs_exist_ok=True)
        shutil.copytree(written["extra_images"], root, dirs_exist_ok=True)
    shutil.copy(written["json"], os.path.join(llava, "llava_v1_5_mix665k.json"))
    for sub, name in (("allava_laion", "ALLaVA-Caption-LAION-4V.json"), ("allava_laion", "ALLaVA-Instruct-LAION-4V.json"),
                      ("allava_vflan", "ALLaVA-Caption-VFLAN-4V.json"), ("allava_vflan", "ALLaVA-Instruct-VFLAN-4V.json")):
        os.makedirs(os.path.join(allava, sub), exist_ok=True)
        shutil.copy(written["json"], os.path.join(allava, sub, name))
    # Visual Genome region descriptions.
    written = tiny.write_vg(os.path.join(tmp, "vg"))
    _merge_tree(written["images"], os.path.join(data, "vg"))
    shutil.rmtree(tmp)


def _plain_tokenizer(texts: list[str]):
    """A ChatML byte-level BPE tokenizer without the ChatRex tokens, like an LLM's own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # No chat template: ChatRexProcessor gives such a tokenizer its ChatML template.
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def write_parts(parts: str) -> None:
    """Tiny random CLIP, ConvNeXt and LLM folders for ``chatrex convert compose``."""
    import timm
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    clip = CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=16,
    )
    CLIPModel(clip).save_pretrained(os.path.join(parts, "clip"))
    trunk = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
    # open_clip's layout: the timm trunk under visual.trunk.
    save_file({"visual.trunk." + k: v.contiguous() for k, v in trunk.state_dict().items()}, os.path.join(parts, "open_clip_model.safetensors"))
    texts = ["find the dog", "a person standing on the left", "describe the image briefly", "what is in the picture?",
             "a red square on a grey background", "write a haiku about rain"] * 20
    tok = _plain_tokenizer(texts)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False))
    llm.save_pretrained(os.path.join(parts, "llm"))
    tok.save_pretrained(os.path.join(parts, "llm"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.dry_run_7b", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder for the fixture datasets (the recipe's $DATA)")
    parser.add_argument("--parts", required=True, help="folder for the tiny CLIP, ConvNeXt and LLM")
    args = parser.parse_args(argv)
    write_sources(args.data)
    write_parts(args.parts)
    print(f"dry-run inputs: datasets in {args.data}, model parts in {args.parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`import chatrex` and the CLI's start load no torch: a bad path is answered at once; the
detect path loads no training, demo or data-tooling package."""

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    """Modules loaded after running ``code`` in a fresh interpreter (``None`` entries, which mark a
    package as not installed, left out)."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(m for m, v in sys.modules.items() if v is not None))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


# What `chatrex detect` imports: the CLI, then (chatrex/cli/main.py, ChatRexPredictor.from_pretrained)
# the predictor, the hub resolver, the released-layout check, the UPN and, with --out, the drawing.
DETECT_PATH_IMPORTS = (
    "from chatrex.cli.main import build_parser\n"
    "build_parser()\n"
    "import chatrex.predictor, chatrex.hub, chatrex.image_processing_chatrex, chatrex.visualize, chatrex.official.layout, chatrex.convert.official\n"
    "from chatrex.predictor import ChatRexPredictor\n"
    "from upn import UPNPredictor\n"
)
# Packages for training (deepspeed, ray, timm), the demo (gradio), data tooling and evaluation
# (pandas, pyarrow, spacy, pycocotools, ...) and this repository's own training / data-engine /
# demo packages: none is needed to answer one question about one image.
NOT_FOR_INFERENCE = {"deepspeed", "gradio", "gradio_client", "ray", "pandas", "pyarrow", "matplotlib", "spacy", "pycocotools",
                     "faster_coco_eval", "imagehash", "timm", "sklearn", "selenium", "data_engine", "train", "demo"}


def test_importing_the_package_and_building_the_cli_parser_loads_no_torch():
    loaded = _modules_after("import chatrex, chatrex.evaluation\nfrom chatrex.cli.main import build_parser\nbuild_parser()")
    assert not {"torch", "transformers"} & loaded


@pytest.mark.slow
def test_public_names_still_resolve_and_register_the_auto_classes():
    loaded = _modules_after(
        "import chatrex\n"
        "from transformers import AutoConfig\n"
        "assert chatrex.ChatRexPredictor.__name__ == 'ChatRexPredictor'\n"
        "assert chatrex.parse_answer is chatrex.text.answer.parse_answer\n"
        "assert type(AutoConfig.for_model('chatrex')).__name__ == 'ChatRexConfig'\n"
        "from chatrex import ChatRexForConditionalGeneration, ChatRexConfig\n"
        "from transformers import AutoModelForCausalLM\n"
        "assert AutoModelForCausalLM._model_mapping[ChatRexConfig] is ChatRexForConditionalGeneration\n"
        "try:\n    chatrex.NoSuchName\nexcept AttributeError as err:\n    assert 'NoSuchName' in str(err)\nelse:\n    raise SystemExit('no error')"
    )
    assert "chatrex.modeling_chatrex" in loaded


def test_a_missing_llm_folder_is_one_line_without_loading_the_model_stack(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "convnext.bin").write_bytes(b"")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "chatrex", "convert", "compose", "--clip", str(tmp_path / "clip"),
                           "--convnext", str(tmp_path / "convnext.bin"), "--llm", "Qwen2.5-7B/", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and errors == ["chatrex convert: error: --llm Qwen2.5-7B/ does not exist (a transformers causal-LM folder "
                                               "with its tokenizer, or a Hugging Face id such as Qwen/Qwen2.5-7B)"]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported, "the check runs before the model stack is imported"


@pytest.mark.slow
def test_the_detect_path_loads_no_training_demo_or_data_package():
    loaded = {name.split(".")[0] for name in _modules_after(DETECT_PATH_IMPORTS)}
    assert "torch" in loaded and "upn" in loaded, "the path was imported"
    assert not NOT_FOR_INFERENCE & loaded


@pytest.mark.slow
def test_the_detect_path_needs_no_accelerate():
    """With accelerate installed, transformers 5.24 imports it itself (modeling_utils ->
    core_model_loading -> integrations.accelerate), so its presence after the imports says nothing
    about our code; marked as not installed (as importlib sees it), the same path must import and
    load none of it: chatrex and upn neither import it nor need it."""
    masked = ("accelerate", "deepspeed", "gradio", "ray")
    loaded = _modules_after("import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in masked) + DETECT_PATH_IMPORTS)
    assert "chatrex.predictor" in loaded
    assert not set(masked) & {name.split(".")[0] for name in loaded}

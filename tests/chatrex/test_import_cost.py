"""`import chatrex` and the CLI's start load no torch: a bad path is answered at once."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_package_and_building_the_cli_parser_loads_no_torch():
    loaded = _modules_after("import chatrex, chatrex.evaluation\nfrom chatrex.cli import build_parser\nbuild_parser()")
    assert not {"torch", "transformers"} & loaded


def test_public_names_still_resolve_and_register_the_auto_classes():
    loaded = _modules_after(
        "import chatrex\n"
        "from transformers import AutoConfig\n"
        "assert chatrex.ChatRexPredictor.__name__ == 'ChatRexPredictor'\n"
        "assert chatrex.parse_answer is chatrex.answer.parse_answer\n"
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

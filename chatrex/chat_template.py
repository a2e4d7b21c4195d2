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

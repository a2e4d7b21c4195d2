"""One engine for renaming state-dict keys with an ordered table of templates (standard library only).

Each converter keeps its table as module-level data, which doubles as the documentation of the
layout, for example ``("stages.{s}.blocks.{b}.gamma", "encoder.stages.{s}.layers.{b}.layer_scale_parameter")``.

* ``{name}`` is a placeholder; its regular expression is given to :class:`KeyRules` (default
  ``\\d+``). Both templates of a pair must use the same placeholders, so that every rule can be
  read backwards.
* A template that ends in ``"."`` (or is empty) is a prefix rule: the rest of the key is kept.
  Any other template matches the whole key.
* The first rule that matches wins, in both directions: put specific rules before general ones
  (and, where several sources share a target, the one :meth:`KeyRules.inverse` should give first).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_PLACEHOLDER = r"\d+"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_REST = "_rest"  # group name of what a prefix rule keeps (so no placeholder may be called that)


def _is_prefix(template: str) -> bool:
    return template == "" or template.endswith(".")


class KeyRules:
    """An ordered ``(source_template, target_template)`` table, compiled once both ways.

    Args:
        table: the ordered pairs (module doc).
        placeholders: ``{name: regex}`` for placeholders whose values are not integers, e.g.
            ``{"p": "weight|bias"}``.
    """

    def __init__(self, table: Iterable[tuple[str, str]], placeholders: dict[str, str] | None = None):
        self.table = list(table)
        self.placeholders = dict(placeholders or {})
        for source, target in self.table:
            self._check_pair(source, target)
        self._forward = [(self._compile(s), t) for s, t in self.table]
        self._backward = [(self._compile(t), s) for s, t in self.table]

    @staticmethod
    def _check_pair(source: str, target: str) -> None:
        if _is_prefix(source) != _is_prefix(target):
            raise ValueError(f"rule ({source!r}, {target!r}): both templates must be prefixes (ending in '.') or neither")
        names = set(_PLACEHOLDER.findall(source)), set(_PLACEHOLDER.findall(target))
        if _REST in names[0] | names[1]:
            raise ValueError(f"rule ({source!r}, {target!r}): the placeholder name {{{_REST}}} is reserved")
        if names[0] != names[1]:
            raise ValueError(f"rule ({source!r}, {target!r}): placeholders {sorted(names[0])} != {sorted(names[1])}")

    def _compile(self, template: str) -> re.Pattern:
        pattern, seen, end = [], set(), 0
        for m in _PLACEHOLDER.finditer(template):
            name = m.group(1)
            pattern.append(re.escape(template[end:m.start()]))
            # A placeholder used twice must take the same value both times.
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>{self.placeholders.get(name, DEFAULT_PLACEHOLDER)})")
            seen.add(name)
            end = m.end()
        pattern.append(re.escape(template[end:]))
        if _is_prefix(template):
            pattern.append(f"(?P<{_REST}>.+)")
        return re.compile("".join(pattern))

    @staticmethod
    def _first(rules: list[tuple[re.Pattern, str]], key: str) -> str | None:
        for pattern, template in rules:
            m = pattern.fullmatch(key)
            if m:
                values = m.groupdict()
                return _PLACEHOLDER.sub(lambda p: values[p.group(1)], template) + values.get(_REST, "")
        return None

    def apply(self, key: str) -> str | None:
        """The target name of ``key`` by the first rule whose source matches, else ``None``."""
        return self._first(self._forward, key)

    def inverse(self, key: str) -> str | None:
        """The source name of ``key`` by the first rule whose target matches, else ``None``."""
        return self._first(self._backward, key)

    def rename(self, keys: Iterable[str], inverse: bool = False) -> tuple[dict[str, str], list[str]]:
        """``({old: new}, unmatched)`` for ``keys`` (forwards, or backwards with ``inverse=True``)."""
        one = self.inverse if inverse else self.apply
        renamed, unmatched = {}, []
        for key in keys:
            new = one(key)
            if new is None:
                unmatched.append(key)
            else:
                renamed[key] = new
        return renamed, unmatched

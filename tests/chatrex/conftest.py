"""Fixtures shared by the tests in this folder (pytest registers what a conftest imports)."""

from .official_layout import rexseek_tokenizer_dir, tiny_official  # noqa: F401

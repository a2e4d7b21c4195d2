"""Converters from released checkpoints and reference libraries to this project's layout."""

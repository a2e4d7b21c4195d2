"""Torch-free helpers: JSONL, YAML configs, atomic writes, strict loading, devices and dtypes."""

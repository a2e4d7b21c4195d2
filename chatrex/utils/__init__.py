"""Small helpers, torch-free except devices.py: JSONL, YAML configs, atomic writes, the box check, strict loading, devices and dtypes."""

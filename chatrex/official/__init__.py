"""The released checkpoints' own layout (RexSeek-3B, ChatRex-7B): detection, conversion to ours,
deterministic weights in that layout for tests, prompts and answer rules."""

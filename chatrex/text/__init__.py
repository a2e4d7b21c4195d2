"""The text protocol: special tokens, the answer markup and its parser, prompts, chat templates, the coordinates baseline."""

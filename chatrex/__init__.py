"""ChatRex: a grounded multimodal LLM that answers with box indices."""

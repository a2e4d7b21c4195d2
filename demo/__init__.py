"""Gradio chat demo with box answers. It stays thin: all model work is ChatRexPredictor's."""

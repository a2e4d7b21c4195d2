"""Model parts the HF model composes: object encoder, pointer head, projector, visual-token compression."""

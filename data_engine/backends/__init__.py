"""Model backends of the data engine: protocols in ``base``; ``chatrex`` (default), ``hf``
(transformers auto classes), ``oracle`` (ground truth), ``rules`` (verifier); built by
``registry.build_backend`` from config."""

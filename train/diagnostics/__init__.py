"""Measurements that say what limits a trained model (MODEL_CARD.md "What limits it").

* :mod:`.feature_probes`: linear probes on the object features, by pooling;
* :mod:`.error_causes`: referring and detection errors by cause and by query type;
* :mod:`.oracle_features`: object features that carry the true attributes (the LLM's ceiling).
"""

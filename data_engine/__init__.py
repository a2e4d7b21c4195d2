"""ChatRex data engine: record schema, pipeline stages and the synthetic-world generator.

``data_engine.schema`` validates Rexverse-style records (docs/records.md);
``data_engine.synthetic`` renders the procedural 2-D world of docs/synthetic_world.md.
"""

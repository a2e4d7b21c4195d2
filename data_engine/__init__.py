"""ChatRex data engine: record schema, pipeline stages and the synthetic-world generator.

``data_engine.schema`` validates Rexverse-style records (DESIGN.md §5);
``data_engine.synthetic`` renders the procedural 2-D world of DESIGN.md §7.
"""

"""Record schema (docs/records.md): ``validate_record`` and its constants.

Implemented in :mod:`chatrex.datasets.schema`, because the dataset importers live in the
``chatrex`` package, which sits below ``data_engine`` and must not import it; re-exported here,
where the data engine, training and their tests import it.
"""

from chatrex.datasets.schema import BOX_SLACK, GRANULARITIES, QUERY_TYPES, ROLES, validate_record

__all__ = ["BOX_SLACK", "GRANULARITIES", "QUERY_TYPES", "ROLES", "validate_record"]

"""Importers from public dataset formats to the project's records (docs/records.md).

One module per source (``coco`` also serves Objects365, ``lvis``, ``refcoco``, ``llava``,
``rexverse``, ``vg``), a shared writer (``sink``), the record schema (``schema``, re-exported
as ``data_engine.schema``: ``chatrex`` must not import ``data_engine``) and the
``chatrex data import`` command line (``cli``). Every importer writes absolute pixel xyxy boxes, keeps the source's own ids under
``source`` and on the regions, and reports each bad source row instead of dropping it.
The fields are described in docs/records.md, section "Imported datasets".
"""

from .sink import BadRowError, ImportSummary, sidecar_path

__all__ = ["BadRowError", "ImportSummary", "sidecar_path"]

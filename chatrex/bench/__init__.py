"""Benchmarks on the real datasets under the ChatRex paper's protocol: ``chatrex bench``.

COCO / LVIS detection (:mod:`.detection`) and RefCOCO/+/g REC (:mod:`.rec`), with every knob
in :mod:`.protocol`, resumable sharded runs in :mod:`.runner` / :mod:`.store`. See
docs/benchmarks.md.
"""

from .protocol import DetectionProtocol, ProposalProtocol, RecProtocol

__all__ = ["DetectionProtocol", "ProposalProtocol", "RecProtocol"]

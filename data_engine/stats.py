"""``chatrex data-engine stats OUTPUT``: what a run produced.

Counts per outcome and per rejecting stage (from the manifest), failures per stage, and
per-field coverage of the records (the fraction of records, or of regions, with each field).
"""

from __future__ import annotations

import json
from collections import Counter

from chatrex.utils.jsonl import read_jsonl

from .runners.output import list_shards, manifest_path

RECORD_FIELDS = ("caption", "grounded_caption", "regions", "provenance")
REGION_FIELDS = ("box", "score", "category", "phrase", "description", "referring")


def collect_stats(output: str) -> dict:
    status, rejects, failures = Counter(), Counter(), Counter()
    for row in read_jsonl(manifest_path(output), missing_ok=True):
        status[row.get("status", "ok")] += 1
        if row.get("status") == "rejected":
            rejects[str(row.get("reason", "?")).split(":", 1)[0]] += 1
    for row in read_jsonl(f"{output}/failures.jsonl", missing_ok=True):
        failures[row.get("stage", "?")] += 1
    n_records, n_regions = 0, 0
    record_cov, region_cov = Counter(), Counter()
    verify = Counter()
    for shard in list_shards(output):
        for rec in read_jsonl(shard):
            n_records += 1
            record_cov.update(f for f in RECORD_FIELDS if rec.get(f))
            for reg in rec.get("regions", []):
                n_regions += 1
                region_cov.update(f for f in REGION_FIELDS if reg.get(f) not in (None, ""))
            counts = rec.get("provenance", {}).get("verify", {})
            verify.update({k: v for k, v in counts.items() if isinstance(v, int)})
    return {
        "images": dict(status),
        "rejected_by_stage": dict(rejects),
        "failed_by_stage": dict(failures),
        "records": n_records,
        "regions": n_regions,
        "regions_per_record": round(n_regions / n_records, 2) if n_records else 0.0,
        "record_coverage": {f: round(record_cov[f] / n_records, 3) if n_records else 0.0 for f in RECORD_FIELDS},
        "region_coverage": {f: round(region_cov[f] / n_regions, 3) if n_regions else 0.0 for f in REGION_FIELDS},
        "verify": dict(verify),
    }


def format_stats(stats: dict) -> str:
    lines = [f"images: {', '.join(f'{k} {v}' for k, v in sorted(stats['images'].items())) or 'none'}"]
    if stats["rejected_by_stage"]:
        lines.append("rejected by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["rejected_by_stage"].items())))
    if stats["failed_by_stage"]:
        lines.append("failed by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["failed_by_stage"].items())))
    lines.append(f"records: {stats['records']}, regions: {stats['regions']} ({stats['regions_per_record']} per record)")
    lines.append("record coverage: " + ", ".join(f"{k} {v:.0%}" for k, v in stats["record_coverage"].items()))
    lines.append("region coverage: " + ", ".join(f"{k} {v:.0%}" for k, v in stats["region_coverage"].items()))
    if stats["verify"]:
        lines.append("verify: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["verify"].items())))
    return "\n".join(lines)


def stats_json(output: str) -> str:
    return json.dumps(collect_stats(output), indent=2)

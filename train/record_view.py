"""What a training sample may use of an imported record (docs/records.md, "Imported datasets").

* Crowd regions (COCO ``iscrowd``) are ignore regions: in COCOeval a detection on one is
  neither right nor wrong. Trained as targets they would teach one box for a crowd of
  people, and left in the box list unanswered they would teach "this person is not a
  person". So they leave the record: the other regions are renumbered, queries that target
  one are dropped, and text that refers to one by ``<objN>`` is dropped with them. The
  dataset also keeps proposals that lie mostly inside a crowd region out of the box list.
* A record with conversations, no regions and no image (LLaVA's text-only turns) is a
  text-only sample.
"""

from __future__ import annotations

import numpy as np

from chatrex.text.markup import object_indices, renumber_objects

# A proposal whose area lies at least this much inside a crowd region is dropped, COCOeval's
# criterion (intersection over the detection's area) at IoU 0.5.
CROWD_IOA = 0.5


def is_text_only(record: dict) -> bool:
    return not record.get("image") and not record.get("regions") and bool(record.get("conversations"))


def _refers_to(text, dropped: set[int]) -> bool:
    return isinstance(text, str) and any(n in dropped for n in object_indices(text))


def _renumber(text: str, new_index: list[int | None]) -> str:
    # An index past the record's regions has no new number, so it keeps the one it has.
    return renumber_objects(text, lambda n: new_index[n] if n < len(new_index) else None)


def without_crowd(record: dict) -> tuple[dict, list[list]]:
    """``(record without crowd regions, the crowd regions' boxes)``; the record is returned
    unchanged when it has none."""
    regions = record.get("regions")
    if not isinstance(regions, list) or not any(isinstance(r, dict) and r.get("iscrowd") for r in regions):
        return record, []
    crowd = {i for i, r in enumerate(regions) if isinstance(r, dict) and r.get("iscrowd")}
    new_index: list[int | None] = []
    for i in range(len(regions)):
        new_index.append(None if i in crowd else i - sum(1 for c in crowd if c < i))
    view = dict(record, regions=[r for i, r in enumerate(regions) if i not in crowd])
    if record.get("queries"):
        queries = []
        for q in record["queries"]:
            targets = [int(t) for t in q.get("targets") or []] if isinstance(q, dict) else []
            if any(t in crowd for t in targets):
                continue
            queries.append(dict(q, targets=[new_index[t] if 0 <= t < len(new_index) else t for t in targets]))
        view["queries"] = queries
    if _refers_to(record.get("grounded_caption"), crowd):
        view.pop("grounded_caption")
    elif isinstance(record.get("grounded_caption"), str):
        view["grounded_caption"] = _renumber(record["grounded_caption"], new_index)
    turns = record.get("conversations")
    if isinstance(turns, list) and turns:
        if any(isinstance(t, dict) and _refers_to(t.get("value", t.get("content")), crowd) for t in turns):
            view.pop("conversations")
        else:
            view["conversations"] = [_renumbered_turn(t, new_index) for t in turns]
    return view, [regions[i].get("box") for i in sorted(crowd)]


def _renumbered_turn(turn, new_index):
    if not isinstance(turn, dict):
        return turn
    key = "value" if "value" in turn else "content"
    return dict(turn, **{key: _renumber(turn[key], new_index)}) if isinstance(turn.get(key), str) else turn


def outside_crowd(proposals: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """The proposals (P, 4) that do not lie mostly inside any crowd box (C, 4), pixel xyxy."""
    if not len(proposals) or not len(crowd):
        return proposals
    x1 = np.maximum(proposals[:, None, 0], crowd[None, :, 0])
    y1 = np.maximum(proposals[:, None, 1], crowd[None, :, 1])
    x2 = np.minimum(proposals[:, None, 2], crowd[None, :, 2])
    y2 = np.minimum(proposals[:, None, 3], crowd[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = ((proposals[:, 2] - proposals[:, 0]) * (proposals[:, 3] - proposals[:, 1]))[:, None]
    return proposals[(inter / np.maximum(area, 1e-9)).max(axis=1) < CROWD_IOA]

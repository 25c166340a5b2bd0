"""Stable face ids across the frames of a video: a small greedy IoU tracker.

Each processed frame's boxes are matched to the tracks of the frames before, most
overlapping pair first; a box that overlaps no live track by `min_iou` starts a new id, and a
track not seen for `max_missed` processed frames ends (its id is never reused). Enough for
the few, slowly moving faces of a recording; it does not re-identify a face that left the
picture and came back (that one gets a new id).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamfer.faces import Box

MIN_IOU = 0.3
MAX_MISSED = 15


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    missed: int = 0


class IouTracker:
    """`update(boxes)` -> one id per box, in the boxes' order."""

    def __init__(self, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED) -> None:
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.tracks: list[_Track] = []
        self.next_id = 1

    def update(self, boxes: list[Box]) -> list[int]:
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used or ids[bi] is not None:
                continue
            used.add(ti)
            track = self.tracks[ti]
            track.box, track.missed = boxes[bi], 0
            ids[bi] = track.id
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if ids[bi] is None:
                track = _Track(self.next_id, box)
                self.next_id += 1
                self.tracks.append(track)
                ids[bi] = track.id
        return [i for i in ids if i is not None]

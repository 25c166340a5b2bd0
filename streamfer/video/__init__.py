"""Recorded video in, expression timeline out: `python -m streamfer.video IN.mp4` and the
server's `POST /api/video` share this package (decode, per-frame faces with stable ids,
the timeline files)."""

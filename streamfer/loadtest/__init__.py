"""The load test: a client that behaves like many phone pages at once (`python -m
streamfer.loadtest`). `cli` (settings, one run, the ramp, the verdict), `client` (the
connections), `frames` (what they send), `report` (the summary, the text, the histogram). It
imports neither torch nor the server: only the wire format (streamfer.protocol)."""

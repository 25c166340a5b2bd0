"""The kit the tests and the benchmarks share: the real server in its own process
(serverproc) or its application in the test process (inproc), fake cameras and recorded
videos (fakecam, fakevideo), a headless Chromium phone (browserkit) and a WebSocket client
written byte by byte (rawws).

Benchmarks import it from the repository root (`python -m bench.NAME`), as pytest does."""

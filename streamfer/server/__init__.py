"""The server: the aiohttp app, the WebSocket stream, the micro-batcher and its settings.

Run it with `python -m streamfer.serve`. Nothing outside streamfer/server/ and bench/ imports
from here but the video command line, which loads its model the server's way
(batcher.load_predictor): training and the load test use the shared modules of streamfer/ only.
"""

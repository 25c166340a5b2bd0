"""streamfer: real-time facial expression recognition served over WebSocket."""

__version__ = "0.1.0"

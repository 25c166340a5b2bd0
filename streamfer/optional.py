"""PyTorch and OpenCV, optional dependencies of the server: asked for without importing them.

A CPU server runs the int8 model on ONNX Runtime, BlazeFace on LiteRT and its pixels on
Pillow, numpy and libjpeg-turbo (streamfer/pixels.py), so `pip install streamfer` brings
neither torch nor OpenCV. What does need torch (the TorchScript model, CUDA, the batched
PyTorch BlazeFace) imports it through `import_torch`; what needs OpenCV (video files, the Haar
cascade fallback) through `import_cv2`. Each names the extra to install.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from streamfer.contract import ModelError

TORCH_EXTRA = "streamfer[gpu]"  # the extra that brings PyTorch (pyproject.toml)
OPENCV_EXTRA = "streamfer[video]"  # the extra that brings OpenCV and its FFmpeg


class TorchMissing(ModelError):
    """What was asked for runs on PyTorch, which is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs PyTorch, which is not installed: pip install "
                         f"'{TORCH_EXTRA}' (README, \"Run the server on the shipped model\")")


def has_torch() -> bool:
    """Is PyTorch installed? (Asked without importing it.)"""
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def import_torch(what: str) -> Any:
    """`import torch`, or TorchMissing saying that `what` needs it and which extra brings it."""
    if not has_torch():
        raise TorchMissing(what)
    import torch

    return torch


def may_have_cuda() -> bool:
    """Could torch see a GPU here? Not without torch, nor on Linux without an NVIDIA (or
    WSL) device node: then torch is not imported just to hear so."""
    if not has_torch():
        return False
    if sys.platform.startswith("linux"):
        dev = Path("/dev")
        return (dev / "dxg").exists() or any(dev.glob("nvidia[0-9]*"))
    return True


class OpenCVMissing(RuntimeError):
    """What was asked for runs on OpenCV, which is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs OpenCV, which is not installed: pip install "
                         f"'{OPENCV_EXTRA}' (README, \"Run the server on the shipped model\")")


def has_opencv() -> bool:
    """Is OpenCV installed? (Asked without importing it: OpenCV reads its pixel limit when
    first imported, streamfer.imagecheck.limit_opencv.)"""
    return "cv2" in sys.modules or importlib.util.find_spec("cv2") is not None


def import_cv2(what: str) -> Any:
    """`import cv2`, or OpenCVMissing saying that `what` needs it and which extra brings it."""
    if not has_opencv():
        raise OpenCVMissing(what)
    import cv2

    return cv2

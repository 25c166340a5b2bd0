"""The real server's application in the test process (aiohttp's test server on 127.0.0.1):
its configuration for the tests, the client types, and the bound on every wait. The
`predictor`, `make_client` and `client` fixtures of tests/conftest.py are built on it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient

from streamfer.server.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent.parent
BOUND_S = 30.0  # no single wait may take longer (the machine is busy; this is not a timing)

T = TypeVar("T")
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def bound(aw: Awaitable[T]) -> Awaitable[T]:
    """`aw`, failing the test instead of hanging it if it never completes."""
    return asyncio.wait_for(aw, BOUND_S)


def config(tiny_model_path: Path, **overrides: Any) -> ServeConfig:
    """The server's configuration for the tests: the tiny model on the CPU, one worker, a
    deadline no busy machine misses, no page to serve; `overrides` replace fields."""
    base = ServeConfig(model=tiny_model_path, host="127.0.0.1", port=0, device="cpu",
                       workers=1, deadline_ms=20_000, web_dir=ROOT / "no-such-web-dir")
    return dataclasses.replace(base, **overrides)

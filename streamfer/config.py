"""The server's settings: one dataclass, filled from command-line flags with STREAMFER_*
environment fallbacks (flag > environment > default), so a PaaS can configure it with
environment variables alone and a developer with flags alone."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "ferplus-5class.pt"  # docs/RESULTS.md: real faces
DEFAULT_WEB_DIR = PACKAGE_ROOT / "web"
TTA_CHOICES = ("ten", "mirror", "centre")
ENV_PREFIX = "STREAMFER_"


@dataclass(frozen=True)
class ServeConfig:
    model: Path = DEFAULT_MODEL
    host: str = "0.0.0.0"  # all interfaces: phones on the LAN must reach it
    port: int = 8080
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 2.0
    tta: str | None = None  # None: the model's own default (metadata tta_default)
    max_frame_bytes: int = 256 * 1024
    max_connections: int = 64
    max_fps: float = 30.0
    suggested_fps: float = 15.0
    queue_limit: int = 64
    deadline_ms: float = 500.0
    allow_origin: tuple[str, ...] = ()
    https: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    threads: int = 0  # torch intra-op threads for inference; 0 = torch's default
    optimize: bool = True  # freeze + fuse the model for the CPU at load (streamfer/model.py)
    web_dir: Path = DEFAULT_WEB_DIR
    shutdown_timeout_s: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch < 1:
            problems.append("max_batch must be >= 1")
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be >= 0")
        if self.max_frame_bytes < 1:
            problems.append("max_frame_bytes must be >= 1")
        if self.max_connections < 1:
            problems.append("max_connections must be >= 1")
        if self.queue_limit < 1:
            problems.append("queue_limit must be >= 1")
        if self.deadline_ms <= 0:
            problems.append("deadline_ms must be > 0")
        if self.threads < 0:
            problems.append("threads must be >= 0")
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if self.tta is not None and self.tta not in TTA_CHOICES:
            problems.append(f"tta must be one of {TTA_CHOICES}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append("device must be auto, cpu or cuda")
        if (self.certfile is None) != (self.keyfile is None):
            problems.append("certfile and keyfile go together")
        if self.https and self.certfile is not None:
            problems.append("use --https (self-signed) or --certfile/--keyfile, not both")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.https or self.certfile is not None

    @property
    def max_message_bytes(self) -> int:
        """aiohttp's hard WebSocket message limit: well above max_frame_bytes so an oversize
        frame gets a clear error reply; only a message past this closes the socket (1009)."""
        return 4 * self.max_frame_bytes + 64 * 1024


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(
        prog="python -m streamfer.serve",
        description="Serve the phone page and the /ws frame stream. Every flag falls back to "
                    "the environment variable STREAMFER_<FLAG> (e.g. STREAMFER_PORT).")
    add = p.add_argument
    add("--model", type=Path, help=f"TorchScript model (default {d.model})")
    add("--host", help=f"interface to listen on (default {d.host}: every interface, so phones "
                       "on the LAN can connect; 127.0.0.1 for this machine only)")
    add("--port", type=int, help=f"TCP port (default {d.port})")
    add("--device", choices=("auto", "cpu", "cuda"), help="auto = CUDA when available")
    add("--max-batch", type=int, help=f"largest inference batch (default {d.max_batch})")
    add("--max-wait-ms", type=float, help="longest wait to fill a batch when more frames are on "
                                          f"their way (default {d.max_wait_ms})")
    add("--tta", choices=TTA_CHOICES, help="test-time averaging (default: the model's own)")
    add("--max-frame-bytes", type=int, help=f"largest image per frame (default "
                                            f"{d.max_frame_bytes})")
    add("--max-connections", type=int, help=f"WebSocket connections at once (default "
                                            f"{d.max_connections}); more get HTTP 503")
    add("--max-fps", type=float, help=f"frames per second per connection (default {d.max_fps}; "
                                      "0 = no cap); faster ones are dropped as rate_limited")
    add("--suggested-fps", type=float, help=f"frame rate the greeting suggests (default "
                                            f"{d.suggested_fps})")
    add("--queue-limit", type=int, help=f"frames waiting for a batch before new ones are shed "
                                        f"as overloaded (default {d.queue_limit})")
    add("--deadline-ms", type=float, help=f"drop a frame not in a batch this long after it "
                                          f"arrived (default {d.deadline_ms})")
    add("--allow-origin", action="append", metavar="ORIGIN",
        help="extra allowed WebSocket Origin, e.g. https://example.org (repeatable; '*' allows "
             "any; the environment variable takes a comma-separated list)")
    add("--https", action="store_true", default=None,
        help="serve HTTPS with a self-signed certificate made at start (for phones on a LAN)")
    add("--certfile", type=Path, help="TLS certificate (PEM) for HTTPS")
    add("--keyfile", type=Path, help="TLS private key (PEM) for HTTPS")
    add("--workers", type=int, help=f"decode/face-detection threads (default {d.workers})")
    add("--threads", type=int, help="torch threads for inference (default 0: torch's own "
                                    "choice, usually one per core)")
    add("--optimize", action=argparse.BooleanOptionalAction, default=None,
        help="on the CPU, freeze the model and let oneDNN fuse its layers at load (default on; "
             "--no-optimize runs the file as loaded)")
    add("--web-dir", type=Path, help=f"the phone page's folder (default {d.web_dir})")
    add("--log-level", help=f"logging level (default {d.log_level})")
    return p


def _convert(name: str, annotation: str, raw: str) -> object:
    """An environment variable's text -> the field's type."""
    if name == "allow_origin":
        return tuple(o.strip() for o in raw.split(",") if o.strip())
    if annotation == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    kind = {"int": int, "float": float}.get(annotation.split(" |")[0],
                                           Path if "Path" in annotation else str)
    return kind(raw)


def parse_config(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> ServeConfig:
    """Flags first, then STREAMFER_<NAME> environment variables, then the defaults."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, object] = {}
    for f in fields(ServeConfig):
        value = args.get(f.name)
        raw = env.get(ENV_PREFIX + f.name.upper(), "")
        if value is None and f.name in args and raw != "":
            try:
                value = _convert(f.name, str(f.type), raw)
            except ValueError as exc:
                parser.error(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}")
        if value is not None:
            values[f.name] = tuple(value) if f.name == "allow_origin" else value
    try:
        return ServeConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")  # parser.error exits

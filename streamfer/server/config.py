"""The server's settings: one dataclass, filled from command-line flags with STREAMFER_*
environment fallbacks (flag > environment > default), so a PaaS can configure it with
environment variables alone and a developer with flags alone. Each field is one setting:
its flag, --help text, choices, range and environment variable all derive from it
(streamfer/cli.py), so adding a setting is one line here; __post_init__ holds every field to
its choices and range (cli.check) and adds the rules between fields."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamfer import cli
from streamfer.cli import opt, parse
from streamfer.contract import TTA_MODES
from streamfer.detect import DETECTORS
from streamfer.model import DEVICES
from streamfer.onnx_int8 import RUNTIMES
from streamfer.paths import DEFAULT_MODEL, DEFAULT_WEB_DIR
from streamfer.server.vendor import INFERENCE, INFERENCES
from streamfer.video.decode import MAX_VIDEO_BYTES, MAX_VIDEO_PIXELS, MAX_VIDEO_SECONDS

TTA_CHOICES = TTA_MODES
DETECTOR_CHOICES = ("auto", *DETECTORS)
ENV_PREFIX = "STREAMFER_"
HTTP_DRAIN_S = 2.0  # after the WebSockets: how long HTTP requests in progress may finish
HTTP_LINGER_S = 2.0  # the rest of a refused request's body is read and dropped this long
PROG = "python -m streamfer.serve"
DESCRIPTION = ("Serve the phone page, the /ws frame stream and /api/predict. Every flag falls "
               "back to the environment variable STREAMFER_<FLAG> (e.g. STREAMFER_PORT); "
               "flags win over the environment.")


@dataclass(frozen=True)
class ServeConfig:
    model: Path = opt(DEFAULT_MODEL, "TorchScript model (classes, input size and averaging "
                      "modes come from its metadata)")
    host: str = opt("0.0.0.0", "interface to listen on: 0.0.0.0 = every interface, so anyone "
                    "who can reach this machine (phones on the LAN, and more where it has a "
                    "public address) can connect; 127.0.0.1 for this machine only")
    port: int = opt(8080, "TCP port (0: any free port)", at_least=0, at_most=65535)
    device: str = opt("auto", "auto = CUDA when torch sees a GPU", DEVICES)
    max_batch: int = opt(32, "largest inference batch", at_least=1)
    max_wait_ms: float = opt(2.0, "longest wait to fill a batch, only while more frames are "
                             "being decoded (a lone frame never waits)", at_least=0)
    tta: str | None = opt(None, "test-time averaging (default: the model's own)", TTA_CHOICES)
    max_frame_bytes: int = opt(256 * 1024, "largest image per WebSocket frame (bigger: an "
                               "error reply, the connection stays open)", at_least=1)
    max_upload_bytes: int = opt(20 * 1024 * 1024, "largest photo on /api/predict (bigger: "
                                "HTTP 413 naming this flag); a phone photo is 3-12 MB", at_least=1)
    detector: str = opt("auto", "face detector for full frames: blazeface (the page's own "
                        "network; weights from web/node_modules, `npm ci` in web/), haar "
                        "(OpenCV's cascade, opencv<5 only), or auto: blazeface when installed, "
                        "else haar", DETECTOR_CHOICES)
    detect_batch: bool | None = opt(None, "run face detection as a batched stage on the "
                                    "model's device (default: on with CUDA; on the CPU it "
                                    "runs in the decode threads)")
    max_connections: int = opt(64, "WebSocket connections at once; more get HTTP 503",
                               at_least=1)
    max_sockets: int = opt(256, "open TCP connections at once per serving process, counted "
                           "from the accept (HTTP, WebSockets, TLS handshakes in progress); "
                           "at it, the oldest connection that has sent nothing yet (or is in "
                           "its TLS handshake) is closed to make room, and when none has, the "
                           "new one gets 503 and is closed (over TLS: closed). Keep it below "
                           "the descriptor limit (docs/DEPLOY.md)")
    tls_handshake_timeout_s: float = opt(5.0, "a TLS handshake not finished within this many "
                                         "seconds of the connection opening closes it",
                                         above=0)
    max_uploads: int = opt(8, "photos on /api/predict at once, from the start of their body to "
                           "their reply; more get 503 with Retry-After before their body is "
                           "read (memory: about this times --max-upload-bytes plus a decoded "
                           "photo each, docs/DEPLOY.md)", at_least=1)
    photo_deadline_ms: float = opt(10000.0, "an uploaded photo not in a batch this long after "
                                   "its whole body arrived is answered dropped/deadline",
                                   above=0)
    max_fps: float = opt(30.0, "frames per second per connection (0 = no cap); faster ones "
                         "are answered dropped/rate_limited")
    suggested_fps: float = opt(15.0, "frame rate the greeting suggests to the page")
    queue_limit: int = opt(64, "frames waiting for a batch before new ones are answered "
                           "dropped/overloaded", at_least=1)
    deadline_ms: float = opt(500.0, "a frame not in a batch this long after it arrived is "
                             "answered dropped/deadline", above=0)
    allow_origin: tuple[str, ...] = opt((), "extra allowed WebSocket Origin, e.g. "
                                        "https://example.org (repeatable; '*' allows any; the "
                                        "environment variable takes a comma-separated list)",
                                        metavar="ORIGIN")
    allow_host: tuple[str, ...] = opt((), "extra host name the server answers to (the Host "
                                      "header; repeatable; '*' answers any). Always answered: IP "
                                      "addresses, names without a dot (localhost), .local, this "
                                      "machine's names and the hosts of --allow-origin; other "
                                      "names (a DNS-rebinding page) get 403", metavar="HOST")
    metrics_from: tuple[str, ...] = opt(("127.0.0.0/8", "::1/128"), "networks allowed to read "
                                        "/metrics and /healthz's details (repeatable CIDR, e.g. "
                                        "10.0.0.0/8 for a cluster's Prometheus; 0.0.0.0/0 and "
                                        "::/0 for anyone); others get 403 on /metrics and only "
                                        "the status from /healthz", metavar="CIDR")
    https: bool = opt(False, "serve HTTPS with a self-signed certificate (for phones on a "
                      "LAN), kept in --state-dir and reused across restarts while it names "
                      "the same hosts")
    state_dir: Path | None = opt(None, "where --https keeps its certificate and key (made "
                                 "0700; default $XDG_STATE_HOME/streamfer, else "
                                 "~/.local/state/streamfer)")
    certfile: Path | None = opt(None, "TLS certificate (PEM) for HTTPS")
    keyfile: Path | None = opt(None, "TLS private key (PEM) for HTTPS")
    workers: int = opt(None, "decode processes and face-detection threads (default: the "
                       "cores available)",
                       factory=lambda: available_cores(), at_least=1)
    threads: int = opt(0, "inference threads (0: one for the int8 runtime, torch's own choice "
                       "-- one per core -- for the TorchScript)", at_least=0)
    optimize: bool = opt(True, "on the CPU, freeze the TorchScript model and let oneDNN fuse "
                         "its layers at load (--no-optimize runs the file as loaded)")
    runtime: str = opt("auto", "CPU inference: onnx-int8 runs models/NAME.int8.onnx (made by "
                       "python -m training.quantize; less CPU per face: bench.model runtimes) "
                       "with ONNX Runtime; auto uses it on the CPU when it was made from this "
                       "very model file, else the TorchScript", RUNTIMES)
    read_timeout_s: float = opt(15.0, "HTTP: a request's headers must arrive within this many "
                                "seconds of the connection opening or of the previous reply "
                                "(idle keep-alive connections close then too), and an upload's "
                                "body within this of the server starting to read it (else "
                                "408); WebSocket: a ping must be answered within it", above=0)
    write_timeout_s: float = opt(10.0, "a WebSocket reply, ping or close the client does not "
                                 "take within this many seconds (it is not reading) cuts the "
                                 "connection; so does HTTP data left unacknowledged this long "
                                 "(Linux TCP_USER_TIMEOUT)", above=0)
    heartbeat_s: float = opt(30.0, "ping each WebSocket this often, whatever it sends",
                             above=0)
    shutdown_timeout_s: float = opt(5.0, "on SIGINT/SIGTERM, answer frames in flight and close "
                                    "WebSockets within this many seconds; sockets still open "
                                    f"then are cut (HTTP requests in progress get "
                                    f"{HTTP_DRAIN_S:g} s more)", above=0)
    processes: int = opt(1, "server processes sharing the port; each has its own model, "
                         "batcher and torch threads (cores / processes unless --threads), the "
                         "kernel spreads connections over them (SO_REUSEPORT, Linux), /metrics "
                         "sums them", at_least=1)
    inference_worker: bool = opt(False, "one inference process owns the model (and the CUDA "
                                 "context) and batches the faces of every serving process; "
                                 "these then only decode, detect and crop (shared memory "
                                 "between them; the GPU machine's layout, docs/DEPLOY.md)")
    max_video_bytes: int = opt(MAX_VIDEO_BYTES, "largest video on /api/video (bigger: HTTP "
                               "413 naming this flag)", above=0)
    max_video_seconds: float = opt(MAX_VIDEO_SECONDS, "longest video on /api/video, by its "
                                   "header and again while decoding", above=0)
    max_video_pixels: int = opt(MAX_VIDEO_PIXELS, "largest video frame on /api/video, in "
                                "pixels", above=0)
    video_jobs: int = opt(2, "/api/video jobs held at once (uploading, queued, running, or "
                          "done and not yet expired); more get HTTP 503. They run one at a "
                          "time, so their disk use is at most this many videos and timelines",
                          above=0)
    video_keep_s: float = opt(600.0, "a finished /api/video job's files are deleted this "
                              "many seconds after it ended (or at DELETE, or at shutdown)",
                              above=0)
    video_upload_s: float = opt(300.0, "an /api/video upload must arrive completely within "
                                "this many seconds (else 408)", above=0)
    web_dir: Path = opt(DEFAULT_WEB_DIR, "the phone page's folder")
    page_inference: str = opt(INFERENCE, "where phones run the in-page face detector's "
                              "network: cpu (wasm SIMD; cheaper than webgl's draws and "
                              "readback for so small a network, docs/BENCHMARKS.md) or webgl "
                              "(the phone's GPU)", INFERENCES)
    log_level: str = opt("INFO", "logging level (DEBUG, INFO, WARNING, ERROR)")

    def __post_init__(self) -> None:
        problems = cli.problems(self)  # each field's choices and range (its opt)
        if self.max_sockets <= self.max_connections:
            problems.append("max_sockets must be > max_connections (WebSockets are sockets too)")
        try:
            for net in self.metrics_from:
                ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            problems.append(f"metrics_from: {exc}")
        if (self.processes > 1 or self.inference_worker) and self.port == 0:
            problems.append("processes > 1 needs a fixed port (they share it)"
                            if self.processes > 1 else "inference_worker needs a fixed port")
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
    def max_request_bytes(self) -> int:
        """aiohttp's request body limit: a WebSocket message or an upload with its multipart
        framing, whichever is larger (each has its own clearer check below this)."""
        return max(self.max_message_bytes, self.max_upload_bytes + 64 * 1024)

    @property
    def max_message_bytes(self) -> int:
        """aiohttp's hard WebSocket message limit: well above max_frame_bytes so an oversize
        frame gets a clear error reply; only a message past this closes the socket (1009)."""
        return 4 * self.max_frame_bytes + 64 * 1024


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parse_config(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> ServeConfig:
    """Flags first, then STREAMFER_<NAME> environment variables, then the defaults."""
    return parse(ServeConfig, argv, prog=PROG, description=DESCRIPTION, env_prefix=ENV_PREFIX,
                 env=env)

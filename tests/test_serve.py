"""`python -m streamfer.serve`: flags and STREAMFER_* fallbacks, TLS, the real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from streamfer import protocol
from streamfer.paths import DEFAULT_MODEL
from streamfer.protocol import pack_frame
from streamfer.server.config import ServeConfig, parse_config
from streamfer.server.serve import running
from streamfer.server.tls import self_signed

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 120.0  # a fresh Python importing torch on a busy machine; not a timing


def test_defaults() -> None:
    config = parse_config([], env={})
    assert config == ServeConfig()
    assert config.model == DEFAULT_MODEL == ROOT / "models" / "ferplus-5class.pt"
    assert (config.host, config.port, config.device) == ("0.0.0.0", 8080, "auto")
    assert config.max_message_bytes > config.max_frame_bytes


def test_flags_beat_environment_which_beats_defaults() -> None:
    env = {"STREAMFER_PORT": "9000", "STREAMFER_MAX_WAIT_MS": "3.5", "STREAMFER_HTTPS": "yes",
           "STREAMFER_ALLOW_ORIGIN": "https://a.example, https://b.example",
           "STREAMFER_MODEL": "/m.pt", "STREAMFER_TTA": "ten"}
    config = parse_config(["--port", "1234", "--max-batch", "8"], env=env)
    assert config.port == 1234 and config.max_batch == 8
    assert config.max_wait_ms == 3.5 and config.https is True and config.tta == "ten"
    assert config.allow_origin == ("https://a.example", "https://b.example")
    assert config.model == Path("/m.pt")
    config = parse_config(["--allow-origin", "https://x", "--allow-origin", "https://y"],
                          env=env)
    assert config.allow_origin == ("https://x", "https://y")
    assert config.optimize is True
    assert parse_config(["--no-optimize"], env={}).optimize is False
    assert parse_config([], env={"STREAMFER_OPTIMIZE": "0"}).optimize is False
    assert parse_config(["--optimize"], env={"STREAMFER_OPTIMIZE": "0"}).optimize is True


@pytest.mark.parametrize("argv", [
    ["--max-batch", "0"],
    ["--certfile", "c.pem"],  # without its key
    ["--https", "--certfile", "c.pem", "--keyfile", "k.pem"],
    ["--tta", "sideways"],
    ["--port", "eighty"],
])
def test_bad_settings_exit_with_a_message(argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, env={})
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={"STREAMFER_PORT": "eighty"})
    assert "STREAMFER_PORT='eighty'" in capsys.readouterr().err


def test_self_signed_certificate_names_localhost_and_loopback(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path, hosts=["phone-server.lan"])
    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "phone-server.lan"} <= names and {"127.0.0.1", "::1"} <= ips
    assert keyfile.stat().st_mode & 0o077 == 0  # the key is private to its owner


@pytest.mark.parametrize("how", ["https", "certfile"])
async def test_https_serves_a_verifiable_certificate(how: str, tiny_model_path: Path,
                                                     tmp_path: Path, crop_jpeg: bytes) -> None:
    """A real TLS handshake, verified (chain + host name 127.0.0.1) against the server's own
    certificate; then the page's wss:// round trip over it."""
    if how == "https":
        tls: dict[str, object] = {"https": True}
    else:
        certfile, keyfile = self_signed(tmp_path)
        tls = {"certfile": certfile, "keyfile": keyfile}
    config = ServeConfig(model=tiny_model_path, host="127.0.0.1", port=0, device="cpu",
                         workers=1, **tls)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    async with running(config) as (runner, urls):
        port = runner.addresses[0][1]
        assert urls == [f"https://127.0.0.1:{port}/"]
        pem = await loop.run_in_executor(None, ssl.get_server_certificate, ("127.0.0.1", port))
        trust = ssl.create_default_context(cadata=pem)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{urls[0]}healthz", ssl=trust) as resp:
                assert resp.status == 200 and (await resp.json())["model"] == "tiny"
            async with session.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=trust) as ws:
                assert (await asyncio.wait_for(ws.receive_json(), 30))["type"] == "hello"
                await ws.send_bytes(pack_frame(5, crop_jpeg, is_crop=True))
                reply = await asyncio.wait_for(ws.receive_json(), 30)
                assert reply["id"] == 5 and reply["status"] == "ok"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{urls[0]}healthz")  # untrusted by default: it is TLS


@pytest.fixture
def crop_jpeg() -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 100, np.uint8))
    assert ok
    return buf.tobytes()


async def _start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamfer.serve", *args, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


async def test_the_command_serves_until_sigterm(tiny_model_path: Path,
                                                crop_jpeg: bytes) -> None:
    proc = await _start("--model", str(tiny_model_path), "--host", "127.0.0.1", "--port", "0",
                        "--device", "cpu", "--workers", "1", env={"STREAMFER_MAX_FPS": "7"})
    assert proc.stderr is not None
    try:
        for _ in range(50):  # the startup line, after any warnings (bounded)
            line = (await asyncio.wait_for(proc.stderr.readline(), BOUND_S)).decode()
            match = re.search(r"serving (http://127\.0\.0\.1:(\d+)/)", line)
            if match or not line:
                break
        assert match, line
        assert "model tiny on cpu" in line and "anger,happiness" in line
        url = match.group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "healthz") as resp:
                assert resp.status == 200
            async with session.ws_connect(url + "ws") as ws:
                hello = await asyncio.wait_for(ws.receive_json(), 30)
                assert hello["limits"]["max_fps"] == 7  # from the environment
                await ws.send_bytes(pack_frame(1, crop_jpeg, is_crop=True))
                assert (await asyncio.wait_for(ws.receive_json(), 30))["status"] == "ok"
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(ws.receive_json(), 30) == protocol.closing()
                msg = await asyncio.wait_for(ws.receive(), 30)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        assert await asyncio.wait_for(proc.wait(), BOUND_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_command_explains_a_missing_model(tmp_path: Path) -> None:
    proc = await _start("--model", str(tmp_path / "nope.pt"), "--port", "0")
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), BOUND_S)).decode()
    assert await asyncio.wait_for(proc.wait(), BOUND_S) == 2
    assert "model file not found" in err and "Traceback" not in err


def test_a_config_built_directly_is_held_to_its_declared_choices_and_ranges() -> None:
    """The checks come from each field's opt(...), not from argparse: a ServeConfig made in
    code is refused for the same values the command line refuses."""
    from streamfer.server.config import ServeConfig

    for kwargs, said in (({"port": 80800}, "port must be 0-65535"),
                         ({"max_batch": 0}, "max_batch must be >= 1"),
                         ({"deadline_ms": 0.0}, "deadline_ms must be > 0"),
                         ({"tta": "sideways"}, "tta must be one of"),
                         ({"detector": "dlib"}, "detector must be one of"),
                         ({"max_sockets": 8, "max_connections": 8}, "max_sockets must be >")):
        with pytest.raises(ValueError, match=said):
            ServeConfig(**kwargs)
    assert ServeConfig(port=0, tta="ten").port == 0

"""TLS for `--https`: phones only open the camera on secure pages (https:// or localhost).

On a LAN there is no public name to get a real certificate for, so `--https` makes a
self-signed one naming this machine's LAN addresses, its host name and localhost, and keeps
it in a per-user state folder (`state_dir()`: 0700, its files 0600): the next start reuses it
while it names the same hosts and is not near its expiry, so a phone that accepted it once
is not asked again after a restart. Its SHA-256 fingerprint is printed at start, to compare
with what the phone's browser shows. `tls_files` says what a server serves TLS with (that
certificate, or the operator's --certfile/--keyfile), `server_context` makes its context.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamfer.server.config import ServeConfig

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DAYS = 365  # a self-signed certificate's lifetime
RENEW_DAYS = 30  # made anew when it expires within this many days
CERT, KEY = "cert.pem", "key.pem"


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex (as browsers show)
    reused: bool  # False: made at this start


def state_dir(base: Path | None = None) -> Path:
    """The per-user folder for the server's key material, made 0700: `base`, else
    $XDG_STATE_HOME/streamfer, else ~/.local/state/streamfer."""
    if base is None:
        xdg = os.environ.get("XDG_STATE_HOME", "").strip()
        base = (Path(xdg) if xdg else Path.home() / ".local" / "state") / "streamfer"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    base.chmod(0o700)
    return base


def lan_addresses() -> list[str]:
    """This machine's non-loopback IP addresses (best effort, no packets sent)."""
    found: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect only picks a route: nothing is sent
            found.add(s.getsockname()[0])
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(a for a in found if not ipaddress.ip_address(a.split("%")[0]).is_loopback)


def subject_names(hosts: list[str] | None = None) -> tuple[list[str], list[IPAddress]]:
    """(DNS names, IP addresses) a certificate for this machine names: localhost, 127.0.0.1,
    ::1, this host's name and LAN addresses, plus `hosts` (names or IP addresses)."""
    names = ["localhost", socket.gethostname(), *(hosts or [])]
    ips = ["127.0.0.1", "::1", *lan_addresses()]
    dns: list[str] = []
    addrs: list[IPAddress] = []
    for entry in [*names, *ips]:
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            if entry and entry not in dns:
                dns.append(entry)
        else:
            if ip not in addrs:
                addrs.append(ip)
    return dns, addrs


def persistent(directory: Path, *, hosts: list[str] | None = None) -> Certificate:
    """The self-signed certificate in `directory` (a state_dir()), reused while it names
    exactly the hosts subject_names(hosts) gives and expires more than RENEW_DAYS from now;
    else a new one replaces it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    certfile, keyfile = directory / CERT, directory / KEY
    dns, addrs = subject_names(hosts)
    try:
        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
        key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        same_names = (set(san.get_values_for_type(x509.DNSName)) == set(dns) and
                      set(san.get_values_for_type(x509.IPAddress)) == set(addrs))
        left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        matches = key.public_key().public_numbers() == cert.public_key().public_numbers()
        reuse = same_names and matches and left > dt.timedelta(days=RENEW_DAYS)
        why = ("the names it covers changed" if not same_names else "key does not match"
               if not matches else f"it expires in {left.days} days")
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound) as exc:
        reuse, why = False, f"none usable ({type(exc).__name__})"
    if not reuse:
        log.info("making a new self-signed certificate in %s: %s", directory, why)
        self_signed(directory, hosts=hosts, days=DAYS)
        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return Certificate(certfile, keyfile, ":".join(digest[i:i + 2] for i in range(0, 64, 2)),
                       reused=reuse)


def self_signed(directory: str | Path, *, hosts: list[str] | None = None,
                days: int = DAYS) -> tuple[Path, Path]:
    """Write cert.pem and key.pem (a self-signed ECDSA P-256 certificate naming
    subject_names(hosts)) into `directory`, each 0600, each replaced whole (a file written
    beside it, then renamed)."""
    directory = Path(directory)
    dns, addrs = subject_names(hosts)
    # Imported here, not at the top: only minting a certificate needs cryptography, so the
    # plain-HTTP server starts where that package is missing (some GPU images lack it).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamfer (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(d) for d in dns] + [x509.IPAddress(a) for a in addrs]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / CERT, directory / KEY
    _write_private(keyfile, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    _write_private(certfile, cert.public_bytes(serialization.Encoding.PEM))
    log.debug("self-signed certificate for %s", [*dns, *map(str, addrs)])
    return certfile, keyfile


def _write_private(path: Path, data: bytes) -> None:
    """`data` into `path`, mode 0600 from its first byte, replacing any old file whole."""
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    part.replace(path)


def server_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server-side TLS context from PEM files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


def named_hosts(config: ServeConfig) -> list[str]:
    """Hosts a self-signed certificate names besides this machine's own (--host, if one)."""
    return [] if config.host in ("0.0.0.0", "::", "") else [config.host]


@dataclass(frozen=True)
class TlsFiles:
    """The certificate and key a TLS server serves; `made`: the self-signed one --https made
    or reused (None: the operator's --certfile/--keyfile)."""

    certfile: Path
    keyfile: Path
    made: Certificate | None = None


def tls_files(config: ServeConfig) -> TlsFiles | None:
    """What `config` serves TLS with (--https: the kept self-signed certificate, made or
    reused here; else --certfile/--keyfile), or None for plain HTTP. Used once per server: by
    `running`, or by the supervisor for all its processes (one certificate for all)."""
    if config.https:
        cert = persistent(state_dir(config.state_dir), hosts=named_hosts(config))
        return TlsFiles(cert.certfile, cert.keyfile, cert)
    if config.certfile is not None and config.keyfile is not None:
        return TlsFiles(config.certfile, config.keyfile)
    return None

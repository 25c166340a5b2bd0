"""TLS for `--https`: phones only open the camera on secure pages (https:// or localhost).

On a LAN there is no public name to get a real certificate for, so `--https` makes a
self-signed one naming this machine's LAN addresses, its host name and localhost; the
phone's browser asks once to accept it. The key never leaves the temporary directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def self_signed(directory: str | Path, *, hosts: list[str] | None = None,
                days: int = 30) -> tuple[Path, Path]:
    """Write cert.pem and key.pem (a self-signed ECDSA P-256 certificate) into `directory`.

    Subject alternative names: localhost, 127.0.0.1, ::1, this host's name and LAN
    addresses, plus `hosts` (names or IP addresses).
    """
    directory = Path(directory)
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
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.debug("self-signed certificate for %s", [*dns, *map(str, addrs)])
    return certfile, keyfile


def server_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server-side TLS context from PEM files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx

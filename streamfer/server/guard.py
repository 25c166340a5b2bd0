"""Checks every request passes before its route: the Host it names, the path it asks for, and
who may read the server's internals (/metrics, /healthz's details).

- Host: a DNS-rebinding page (evil.example resolving to this machine) is same-origin with
  the server in the browser's eyes, so the Origin check passes; its Host header still names
  evil.example. Answered: IP addresses (phones on a LAN type those), names without a dot
  (localhost, intranet short names), names under the suffixes no public DNS can hold
  (PRIVATE_SUFFIXES), this machine's own names, the hosts of --allow-origin, and --allow-host.
- Path: web/node_modules is served only through /vendor/ (streamfer.server.vendor). The
  path is decoded and normalised once here (percent-escapes, backslashes, dot segments), so
  no spelling of it reaches the static route.
- Internals: /metrics and /healthz's details only to the networks of --metrics-from.
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

HIDDEN_FOLDER = "node_modules"  # never served as such: /vendor/ serves what the page needs


def normalised_path(raw: str) -> str:
    """The path a request names, as a file server would resolve it: percent-escapes decoded
    (repeatedly: %252F too), backslashes as slashes, dot segments and repeated slashes
    resolved. Always absolute."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


def path_hidden(raw: str) -> bool:
    """True for a request path that names anything under node_modules, however spelt."""
    return HIDDEN_FOLDER in (part.lower() for part in normalised_path(raw).split("/"))


def own_names() -> frozenset[str]:
    """This machine's host names (short, fully qualified, .local), lower case. getfqdn may
    ask DNS: call it once, at start."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names |= {name.lower(), name.lower().split(".")[0]}
    names |= {n + ".local" for n in list(names) if "." not in n}
    return frozenset(names)


def host_name(host: str) -> str:
    """A Host header's name, without port or brackets, lower case ('' when malformed)."""
    try:
        return (urlsplit("//" + host.strip()).hostname or "").rstrip(".")
    except ValueError:
        return ""


# Special-use names that public DNS never resolves, so a rebinding page cannot use them: mDNS
# (RFC 6762), RFC 6761's reserved names, the home network (RFC 8375) and .internal (ICANN).
PRIVATE_SUFFIXES = (".local", ".localhost", ".test", ".invalid", ".home.arpa", ".internal")


def host_allowed(host: str | None, allowed: Iterable[str], origins: Iterable[str] = (),
                 own: frozenset[str] = frozenset()) -> bool:
    """Whether the server answers a request for `host` (its Host header); `own`: this
    machine's names (own_names())."""
    extra = {a.strip().lower().rstrip(".") for a in allowed}
    if "*" in extra:
        return True
    if not (host or "").strip():
        return True  # no Host (HTTP/1.0 probes): browsers always send one
    name = host_name(host or "")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if "." not in name or name.endswith(PRIVATE_SUFFIXES) or name in own:
        return True  # a rebinding attack needs a name it controls in public DNS
    return name in extra or name in {host_name(urlsplit(o.strip()).netloc)
                                     for o in origins if o.strip() != "*"}


def remote_allowed(remote: str | None, networks: Iterable[str]) -> bool:
    """Whether a client at `remote` (an IP address) is within one of `networks` (CIDR)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    nets = (ipaddress.ip_network(n, strict=False) for n in networks)
    return any(ip.version == net.version and ip in net for net in nets)

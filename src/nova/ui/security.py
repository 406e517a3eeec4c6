"""What keeps ``nova ui`` private: the session token, the address it binds, and paths kept under the root.

Run records hold training data, model answers and configs, and the UI can start training, so
every request (pages, assets and API alike) needs the token that the start-up URL carries, as
notebook servers do. The browser keeps it in a cookie scoped to this server's port (cookies are
not port-scoped by themselves, so two servers on one host would otherwise read each other's),
and the page's scripts repeat it in a header on every POST, which a page of another site cannot
do. Nothing here imports the web server: it is plain logic, tested on its own.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from nova.errors import NovaError

TOKEN_PARAM = "token"
TOKEN_HEADER = "x-nova-token"
LOOPBACK_NAMES = ("localhost",)
EXPOSES = ("every run record under the root (training data in data reports, model answers, configs, "
           "metrics) and starting and stopping training on this machine")


def new_token() -> str:
    """A fresh per-session token (256 bits, URL-safe: it travels in the start-up URL)."""
    return secrets.token_urlsafe(32)


def cookie_name(port: int) -> str:
    return f"nova_ui_{port}"


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go on: 0 yes, 401 no token at all, 403 a wrong one."""

    status: int
    message: str = ""


def check_token(expected: str, *, query: str | None, cookie: str | None, header: str | None,
                unsafe_method: bool) -> Verdict:
    """A request is let in with the right token in its query, cookie or header.

    A POST (anything that changes state) also needs the header: a cookie alone would let a
    page on another site submit a form here with the user's cookie.
    """
    offered = [t for t in (query, cookie, header) if t]
    if not offered:
        return Verdict(401, "this nova ui needs the token from its start-up URL (printed by 'nova ui')")
    if not any(hmac.compare_digest(t.encode(), expected.encode()) for t in offered):
        return Verdict(403, "wrong token: open the start-up URL printed by 'nova ui' again")
    if unsafe_method and not (header and hmac.compare_digest(header.encode(), expected.encode())):
        return Verdict(403, f"a request that changes something needs the {TOKEN_HEADER} header")
    return Verdict(0)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: only this machine (and an ``ssh -L`` tunnel ending here) reaches them."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """Refuse a non-loopback address unless asked for explicitly; then say what it exposes."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise NovaError(f"--host {host} would let other machines reach this ui",
                        hint=f"it exposes {EXPOSES}; keep the default 127.0.0.1 and use 'ssh -L', "
                             "or pass --allow-remote to bind it anyway")
    return (f"warning: listening on {host}: anyone who can reach it and has the token gets {EXPOSES}; "
            "the traffic is not encrypted")


def inside(root: Path, relative: str) -> Path:
    """``root/relative`` after resolving links and '..', refused when it leaves the root."""
    base = root.resolve()
    if "\x00" in relative:
        raise NovaError("a path with a NUL byte", hint="give a path under the ui root")
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise NovaError(f"{relative} is outside the ui root {base}",
                        hint="only run directories under the root are shown")
    return target

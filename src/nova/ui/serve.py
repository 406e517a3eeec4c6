"""Bind, print the start-up URL, and serve until Ctrl-C.

The socket is bound here, before the server starts, so ``--port 0`` (any free port) prints
the real port, and an address in use is one clear error instead of a server log line.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from pathlib import Path

from nova.errors import NovaError
from nova.ui.security import check_bind, new_token


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise NovaError(f"cannot listen on {host}:{port}: {exc.strerror}",
                        hint="pick another --port (0: any free one)") from None
    sock.listen(64)
    return sock


def url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/?token={token}"


def require_extra() -> None:
    """The web server packages, or one line saying how to install them."""
    for name in ("starlette", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise NovaError(f"nova ui needs the python package '{name}'",
                            hint="pip install 'nova-tune[ui]', or: pip install starlette uvicorn") from None


def serve(root: Path, configs: Path, host: str, port: int, allow_remote: bool, say: Callable[[str], None]) -> None:
    """Serve the UI for ``root`` until interrupted, printing the URL (with its token) first."""
    warning = check_bind(host, allow_remote)
    if not root.is_dir():
        raise NovaError(f"{root} is not a directory", hint="give --root the directory your runs are written to")
    require_extra()
    import uvicorn

    from nova.ui.app import Settings, build_app

    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    token = new_token()
    app = build_app(Settings(root.resolve(), configs.resolve(), token, real_port))
    if warning:
        say(warning)
    say(f"nova ui: runs under {root.resolve()}, configs in {configs.resolve()}")
    say(f"open: {url(host, real_port, token)}")
    if not warning:
        say(f"from another machine: ssh -L {real_port}:127.0.0.1:{real_port} <this host>, then open the same URL")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])

"""``nova ui``: a local web dashboard over the runs under a directory; launches training safely.

The web server (starlette, uvicorn: the ``nova-tune[ui]`` extra) is imported only here, inside
the command, so ``nova --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer


def ui(
    root: Path = typer.Option(Path("checkpoints"), "--root", help="Directory whose runs and pipelines are shown "
                              "(the default output root). Nothing outside it is served."),
    configs: Path = typer.Option(Path("configs"), "--configs", help="Directory of YAML configs the editor opens, "
                                 "validates, saves and launches (only *.yaml / *.yml files in it)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback needs "
                             "--allow-remote (use 'ssh -L' instead)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Let --host be an address other machines can "
                                      "reach: they see every run record and can start and stop training."),
) -> None:
    """Serve a web dashboard (runs, live curves, compare, config editor and launch) on 127.0.0.1."""
    from nova.ui.serve import serve

    serve(root, configs, host, port, allow_remote, typer.echo)

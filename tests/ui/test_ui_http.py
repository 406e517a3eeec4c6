"""The served UI over plain HTTP: the token gate on pages, assets and API alike, the address rule,
and nothing outside the root."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ui_support import (  # noqa: F401  (the fixtures)
    Server,
    configs_dir_fixture,
    server_fixture,
    trainer_stand_in_fixture,
    ui_root_fixture,
)

from conftest import run_nova


def fetch(url: str, *, data: Any = None, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


PATHS = ["/", "/run?path=demo/sora", "/compare", "/editor", "/api/runs", "/api/run?path=demo/sora",
         "/api/configs", "/api/launches", "/assets/app.js", "/assets/vendor/uPlot.iife.min.js"]


@pytest.mark.parametrize("path", PATHS)
def test_no_token_401_wrong_token_403(server: Server, path: str) -> None:
    status, text, _ = fetch(server.base + path)
    assert status == 401 and "token" in text and "sora" not in text
    status, _, _ = fetch(server.base + path + ("&" if "?" in path else "?") + "token=nope")
    assert status == 403
    status, _, _ = fetch(server.base + path, headers={"x-nova-token": server.token})
    assert status == 200


def test_the_startup_url_sets_a_cookie_and_drops_the_token(server: Server) -> None:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(server.url, timeout=30) as response:
        assert response.geturl() == server.base + "/"  # redirected: the token is not left in the address bar
        assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    with opener.open(server.base + "/api/runs", timeout=30) as response:  # the cookie alone lets a GET in
        assert [r["path"] for r in json.loads(response.read())["runs"]] == ["demo", "live"]


def test_a_post_needs_the_header_not_only_the_cookie(server: Server) -> None:
    cookie = {"cookie": f"nova_ui_{server.base.rsplit(':', 1)[1]}={server.token}"}
    status, text, _ = fetch(server.base + "/api/validate", data={"path": "tiny.yaml", "text": "name: x"},
                            headers=cookie)
    assert status == 403 and "x-nova-token" in text
    status, text, _ = fetch(server.base + "/api/validate", data={"path": "tiny.yaml", "text": "name: x"},
                            headers={**cookie, "x-nova-token": server.token})
    assert status == 200 and json.loads(text)["ok"] is False


def test_nothing_outside_the_root_or_the_config_directory(server: Server, ui_root: Path) -> None:
    auth = {"x-nova-token": server.token}
    for path in ("/api/run?path=..", "/api/run?path=../../etc", "/api/run?path=%2Fetc"):
        status, text, _ = fetch(server.base + path, headers=auth)
        assert status == 404 and "outside the ui root" in text
    status, text, _ = fetch(server.base + "/api/config?path=../../etc/passwd.yaml", headers=auth)
    assert status == 400 and "outside the ui root" in text
    status, _, _ = fetch(server.base + "/assets/../pyproject.toml", headers=auth)
    assert status == 404


def test_another_address_needs_the_flag(tmp_path: Path) -> None:
    done = run_nova("ui", "--root", str(tmp_path), "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr and "training data" in done.stderr and done.stderr.isascii()


def test_help_does_not_import_the_web_server() -> None:
    code = ("import sys; import nova.cli.main; "
            "print(','.join(m for m in ('starlette', 'uvicorn', 'nova.ui', 'nova.ui.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_without_the_extra_one_line_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['uvicorn'] = None; from nova.cli.main import run; "
            f"sys.argv = ['nova', 'ui', '--root', {str(tmp_path)!r}, '--port', '0']; run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: nova ui needs the python package 'uvicorn' "
                                               "(pip install 'nova-tune[ui]', or: pip install starlette uvicorn)"]

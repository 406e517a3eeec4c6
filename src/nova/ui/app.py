"""The ``nova ui`` web application (Starlette): pages, the JSON API, and the token gate in front of both.

Every page is the same static shell (``resources/ui/index.html``) whose script fetches JSON and
builds the page with ``textContent``, so no string from data, configs or model answers is ever
parsed as HTML. The Content-Security-Policy allows scripts and styles from this server only
(no inline script, no CDN): a string that slipped through still could not run. Assets are a
fixed list of packaged files, never a path from the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from nova.errors import NovaError, printable
from nova.ui.editor import config_path, list_configs, preflight, validate
from nova.ui.launch import Launcher, Options
from nova.ui.runs import overview, run_view
from nova.ui.security import TOKEN_HEADER, TOKEN_PARAM, check_token, cookie_name, inside

ASSETS = {"app.js": "text/javascript", "pages.js": "text/javascript", "editor.js": "text/javascript",
          "style.css": "text/css", "vendor/uPlot.iife.min.js": "text/javascript", "vendor/uPlot.min.css": "text/css"}
PAGES = ("/", "/run", "/compare", "/editor")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass
class Settings:
    """What one ``nova ui`` serves: the runs root, the editor's config directory, and its token."""

    root: Path
    configs: Path
    token: str
    port: int


def _asset(name: str) -> bytes:
    path = resources.files("nova.resources") / "ui"
    for part in name.split("/"):  # a fixed name from ASSETS (or the shell), never the request's path
        path = path / part
    return path.read_bytes()


def _headers(response: Response) -> Response:
    response.headers["content-security-policy"] = CSP
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "no-referrer"
    response.headers["cache-control"] = "no-store"
    return response


class TokenGate(BaseHTTPMiddleware):
    """401 without a token, 403 with a wrong one; a right one in the URL becomes a cookie, then a clean URL."""

    def __init__(self, app: Any, settings: Settings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        s = self.settings
        query = request.query_params.get(TOKEN_PARAM)
        verdict = check_token(s.token, query=query, cookie=request.cookies.get(cookie_name(s.port)),
                              header=request.headers.get(TOKEN_HEADER),
                              unsafe_method=request.method not in ("GET", "HEAD"))
        if verdict.status:
            return _headers(PlainTextResponse(verdict.message + "\n", status_code=verdict.status))
        if query and request.method == "GET":  # keep the token out of the address bar and history
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(cookie_name(s.port), s.token, httponly=True, samesite="strict", path="/")
            return _headers(response)
        return _headers(await call_next(request))


def _error(exc: NovaError, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": printable(exc.lines()[0]), "lines": [printable(x) for x in exc.lines()]},
                        status_code=status)


def build_app(settings: Settings) -> Starlette:
    """The application for one root, config directory and token."""
    launcher = Launcher(settings.root)
    shell = _asset("index.html").decode("ascii").replace("@TOKEN@", settings.token)

    async def page(request: Request) -> Response:
        return Response(shell, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(_asset(name), media_type=ASSETS[name])

    async def api_runs(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(overview, settings.root))

    async def api_run(request: Request) -> Response:
        try:
            view = await run_in_threadpool(run_view, settings.root, request.query_params.get("path", ""))
        except NovaError as exc:
            return _error(exc, 404)
        view["launch"] = launcher.record_for(inside(settings.root, view["rel"] or ""))
        return JSONResponse(view)

    async def api_configs(request: Request) -> Response:
        return JSONResponse({"dir": str(settings.configs), "files": list_configs(settings.configs)})

    async def api_config(request: Request) -> Response:
        try:
            path = config_path(settings.configs, request.query_params.get("path", ""))
        except NovaError as exc:
            return _error(exc)
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return JSONResponse({"path": request.query_params.get("path"), "text": text, "exists": path.is_file()})

    async def _body(request: Request) -> tuple[Path, dict[str, Any]]:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("text", ""), str):
            raise NovaError("expected a JSON object with 'path' and 'text'")
        return config_path(settings.configs, str(body.get("path", ""))), body

    async def api_validate(request: Request) -> Response:
        try:
            path, body = await _body(request)
            return JSONResponse((await run_in_threadpool(validate, path, body.get("text", ""))).to_dict())
        except NovaError as exc:
            return _error(exc)

    async def api_preflight(request: Request) -> Response:
        try:
            path, body = await _body(request)
            return JSONResponse(await run_in_threadpool(preflight, path, body.get("text", "")))
        except NovaError as exc:
            return _error(exc)

    async def api_launch(request: Request) -> Response:
        try:
            path, body = await _body(request)
            options = Options(bool(body.get("fresh")), bool(body.get("force")),
                              bool(body.get("resume_with_changes")))
            return JSONResponse(await run_in_threadpool(launcher.launch, path, body.get("text", ""), options))
        except NovaError as exc:
            return _error(exc, 409)

    async def api_run_action(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("stop", "resume"):
            return PlainTextResponse("not found\n", status_code=404)
        try:
            body = await request.json()
            run_dir = inside(settings.root, str((body or {}).get("path", "")))
            act = launcher.stop if action == "stop" else launcher.relaunch
            return JSONResponse(await run_in_threadpool(act, run_dir))
        except NovaError as exc:
            return _error(exc, 409)

    async def api_launches(request: Request) -> Response:
        launcher.reap()
        return JSONResponse({"launches": launcher.view()})

    routes = [Route(p, page) for p in PAGES] + [
        Route("/assets/{name:path}", asset),
        Route("/api/runs", api_runs), Route("/api/run", api_run),
        Route("/api/configs", api_configs), Route("/api/config", api_config),
        Route("/api/validate", api_validate, methods=["POST"]),
        Route("/api/preflight", api_preflight, methods=["POST"]),
        Route("/api/launch", api_launch, methods=["POST"]),
        Route("/api/run/{action:str}", api_run_action, methods=["POST"]),
        Route("/api/launches", api_launches),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, settings=settings)])

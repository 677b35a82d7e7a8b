"""The web console: static HTML, CSS and JavaScript modules from `web/` served at `/app`.

Nothing is built: the files under `web/` are what the browser gets. The folder is found
beside the packages (the project is installed editable, or run from a checkout);
`WORKSESSION_WEB_DIR` points elsewhere (e.g. an image that copies `web/` somewhere else).

What the page needs to know of this service's settings it reads from `/app/config.json`:
the identity provider it signs in through (CONTRACT.md, "Sign-in to the web console"), when
one is configured for it. The page's Content-Security-Policy then also lets it talk to that
provider (discovery, token requests), and to nothing else.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from worksession.settings import Settings

log = logging.getLogger("worksession.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
mimetypes.add_type("application/manifest+json", ".webmanifest")
PREFIX = "/app"

# Same-origin only (and the identity provider, when the console signs in through one: see
# `security_headers`); no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'{provider}; object-src 'none'; base-uri 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP.format(provider=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Files change with the code, not with a build hash: revalidate (cheap, ETag) each time.
    "Cache-Control": "no-cache",
}


def security_headers(settings: Settings) -> dict[str, str]:
    """The console's headers: its page may also fetch from the identity provider's origin
    (discovery, the token endpoint) when it signs in through one."""
    origin = _origin(settings.oidc_issuer) if console_sign_in(settings) else None
    return {**SECURITY_HEADERS,
            "Content-Security-Policy": CSP.format(provider=f" {origin}" if origin else "")}


def console_sign_in(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def console_config(settings: Settings) -> dict[str, Any]:
    """`/app/config.json`: how the console signs in. `oidc` null: by sign-in links only."""
    if not console_sign_in(settings):
        return {"oidc": None}
    issuer = settings.oidc_issuer or ""
    return {"oidc": {"issuer": issuer, "client_id": settings.oidc_client_id,
                     "scope": settings.oidc_scope,
                     "provider_name": settings.oidc_provider_name or urlsplit(issuer).hostname}}


def _origin(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def web_dir() -> Path:
    return Path(os.environ.get("WORKSESSION_WEB_DIR") or WEB_DIR)


class _ConsoleFiles(StaticFiles):
    def __init__(self, *, headers: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers = headers

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(self.headers)
        return response


def mount_web(app: FastAPI, settings: Settings) -> None:
    """Serve the console at `/app` (and `/app/`, `/app/index.html`, its assets, its
    `config.json`); `/` sends a browser there."""
    root = web_dir()
    index = root / "index.html"
    if not index.is_file():
        log.warning("web console not served: %s has no index.html", root)
        return
    headers = security_headers(settings)
    config = console_config(settings)

    @app.get(PREFIX, include_in_schema=False)
    async def console_index() -> FileResponse:
        # `/app` without the slash serves the page itself; its <base href> finds the assets.
        return FileResponse(index, headers=headers)

    @app.get(f"{PREFIX}/config.json", include_in_schema=False)
    async def console_settings() -> JSONResponse:
        return JSONResponse(config, headers=headers)

    @app.get("/", include_in_schema=False)
    async def to_console() -> RedirectResponse:
        # 307, not 301: a permanent redirect would be cached by browsers for good, and `/`
        # may serve something else one day.
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.mount(PREFIX, _ConsoleFiles(directory=root, html=True, headers=headers),
              name="web-console")

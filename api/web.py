"""The web console: static HTML, CSS and JavaScript modules from `web/` served at `/app`.

Nothing is built: the files under `web/` are what the browser gets. The folder is found
beside the packages (the project is installed editable, or run from a checkout);
`WORKSESSION_WEB_DIR` points elsewhere (e.g. an image that copies `web/` somewhere else).
"""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

log = logging.getLogger("worksession.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
mimetypes.add_type("application/manifest+json", ".webmanifest")
PREFIX = "/app"

# Same-origin only: the console talks to this API and nothing else; no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Files change with the code, not with a build hash: revalidate (cheap, ETag) each time.
    "Cache-Control": "no-cache",
}


def web_dir() -> Path:
    return Path(os.environ.get("WORKSESSION_WEB_DIR") or WEB_DIR)


class _ConsoleFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_web(app: FastAPI) -> None:
    """Serve the console at `/app` (and `/app/`, `/app/index.html`, its assets); `/` sends
    a browser there."""
    root = web_dir()
    index = root / "index.html"
    if not index.is_file():
        log.warning("web console not served: %s has no index.html", root)
        return

    @app.get(PREFIX, include_in_schema=False)
    async def console_index() -> FileResponse:
        # `/app` without the slash serves the page itself; its <base href> finds the assets.
        return FileResponse(index, headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    async def to_console() -> RedirectResponse:
        # 307, not 301: a permanent redirect would be cached by browsers for good, and `/`
        # may serve something else one day.
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.mount(PREFIX, _ConsoleFiles(directory=root, html=True), name="web-console")

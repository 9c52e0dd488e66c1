"""The dashboard: its page and files (from ``egress/api/static``: plain JavaScript modules and one stylesheet, no
build step), served without a token and kept out of the OpenAPI description; the page's own API calls need one
(login box or ``?token=``). A strict Content-Security-Policy: scripts and styles only from these files."""

from collections.abc import Callable
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

STATIC: Final = Path(__file__).parent.parent / "static"
_JS: Final = "text/javascript; charset=utf-8"
FILES: Final = {
    "dashboard.js": _JS,  # the entry module: wires the page
    "state.js": _JS,  # the view in the address bar, times and zones
    "api.js": _JS,  # requests, filters, the live follow
    "dom.js": _JS,  # elements built as text
    "charts.js": _JS,  # the SVG charts
    "table.js": _JS,  # the attempts table and the tops
    "detail.js": _JS,  # one attempt
    "sandbox.js": _JS,  # one sandbox: timeline, quarantine, policy
    "dashboard.css": "text/css; charset=utf-8",
}
"""Every file of the page besides ``dashboard.html``, with its media type (tests/api/test_dashboard_static.py
checks that this names every file in ``static/``)."""
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def router() -> APIRouter:
    routes = APIRouter()
    files = {name: (STATIC / name).read_bytes() for name in ("dashboard.html", *FILES)}
    headers = {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # A new release's files must not meet an old page's modules from the cache: revalidate every time.
        "Cache-Control": "no-cache",
    }

    @routes.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @routes.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        """The page itself needs no token; its API calls do (login box or ``?token=``)."""
        return Response(files["dashboard.html"], media_type="text/html; charset=utf-8", headers=headers)

    def serve(body: bytes, media_type: str) -> Callable[[], Response]:
        def asset() -> Response:
            return Response(body, media_type=media_type, headers=headers)

        return asset

    for name, media_type in FILES.items():
        routes.add_api_route(
            f"/dashboard/{name}", serve(files[name], media_type), methods=["GET"], include_in_schema=False
        )
    return routes

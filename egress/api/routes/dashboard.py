"""The dashboard: its page and files (from ``egress/api/static``), served without a token and kept out of the
OpenAPI description; the page's own API calls need one (login box or ``?token=``)."""

from collections.abc import Callable
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

STATIC: Final = Path(__file__).parent.parent / "static"
_PAGES: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def router() -> APIRouter:
    routes = APIRouter()
    files = {name: (STATIC / name).read_bytes() for name in ("dashboard.html", *_PAGES)}
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

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

    for name, media_type in _PAGES.items():
        routes.add_api_route(
            f"/dashboard/{name}", serve(files[name], media_type), methods=["GET"], include_in_schema=False
        )
    return routes

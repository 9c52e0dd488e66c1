"""The query API (management side only): FastAPI app (`app.create_app`), served by uvicorn (`server.serve`).

Modules: `settings` (the frozen settings), `auth` (tokens and roles), `models` (request/response shapes: the
OpenAPI description), `metrics` (Prometheus), `app` (routes, errors, the dashboard's files under ``static/``).
Reference: docs/api.md.
"""

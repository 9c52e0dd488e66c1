"""The query API (management side only): FastAPI app (`app.create_app`), served by uvicorn (`server.serve`).

Modules: `settings` (the frozen settings), `auth` (tokens and roles), `models` (request/response shapes: the
OpenAPI description), `metrics` (Prometheus), `errors`, `middleware`, `app` (builds the app from the routers in
`routes`, one per resource; the dashboard's files are under ``static/``).
Reference: docs/api.md.
"""

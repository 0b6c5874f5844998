"""The stock dashboard under /dashboard: server-rendered pages (Jinja2) for people.

See docs/dashboard.md for the pages, the auth model and the vendored libraries.
"""

from service.entrypoints.http.dashboard.routes import router

__all__ = ["router"]

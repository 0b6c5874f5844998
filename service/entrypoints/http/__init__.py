"""The HTTP API (FastAPI): a thin entrypoint onto the same commands and queries."""

"""HTTP API (FastAPI): thin endpoints over the use cases in `application`."""

"""The hub's HTTP API (FastAPI): registry, broker credentials, event desk, reports."""

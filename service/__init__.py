"""The inspection service (FastAPI). Not built yet: see the README's status table."""

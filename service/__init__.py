"""The inspection service: FastAPI over the bundles (``service.app.create_app``).

Layers: ``settings`` (pydantic-settings, prefix ``RPEPAD_``), ``uploads`` (safe image
decoding), ``batching`` (a bounded queue and micro-batches per category, inference off
the event loop), ``problems`` (errors as application/problem+json), ``telemetry``
(Prometheus), ``schemas`` (the API's request/response models), ``app`` (routes only).
The pipeline itself is ``models.inspector.Inspector``; nothing here re-implements it.
"""

"""Prometheus metrics of one app instance (its own registry: several apps can coexist in tests)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rpepad_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("rpepad_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("rpepad_stage_seconds", "Per-image time of each pipeline stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.phase = Histogram("rpepad_phase_seconds", "Per-request time of each phase of POST /inspect: receive "
                               "(body and form parsing), read (the upload's bytes), decode (decode and resize, in the "
                               "thread pool), queue (waiting for the model), inference (the model call, the image's "
                               "whole micro-batch), respond (result and figures), serialise (JSON)", ["phase"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("rpepad_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.images = Counter("rpepad_images_inspected", "Images inspected by category and verdict "
                              "(normal, anomalous, review: the pose did not verify)", ["category", "decision"], registry=r)
        self.misalignment = Histogram("rpepad_misalignment_pixels", "Residual reference-to-query displacement "
                                      "(models.verify), pixels at 224", ["category"],
                                      buckets=(0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0), registry=r)
        self.second_looks = Counter("rpepad_second_looks", "Images whose first pose the pose check rejected, by "
                                    "category and outcome of the second look (rescued: a candidate alone verified; "
                                    "review: none did)", ["category", "outcome"], registry=r)
        self.records_failed = Counter("rpepad_records_failed", "Inspection record problems, by reason (queue_full: "
                                      "kept without images; write: a failed try, retried; rejected; images; dropped: left "
                                      "to the journal; writer; journal; overlay; retention); the inspections were answered",
                                      ["reason"], registry=r)
        self.records_numbered = Gauge("rpepad_records_numbered", "Inspection records this process's records writer "
                                      "has numbered in its chain (service/sealing.py), by chain id: scraped and kept "
                                      "apart from the database, it shows records deleted at a chain's end",
                                      ["chain"], registry=r)
        self.errors = Counter("rpepad_errors", "Error responses by status", ["status"], registry=r)
        self.bundles = Gauge("rpepad_bundles_loaded", "Bundles loaded and served", registry=r)
        self.refused = Gauge("rpepad_bundles_refused", "Bundles refused at load", registry=r)
        self.queue = Gauge("rpepad_queue_depth", "Images waiting per category", ["category"], registry=r)
        self.inflight = Gauge("rpepad_inflight_inspections", "Images submitted for inspection and not yet answered "
                              "(queued or in the model call), per category; the autoscaler's metric "
                              "(deploy/k8s/hpa.yaml)", ["category"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open files

    def observe(self, category: str, result) -> None:
        """One answered image (``models.results.Inspection``): its stages' times, its verdict, its
        residual misalignment, and what the second look did where it ran."""
        for stage, ms in result.timings_ms.items():
            self.stage.labels(stage).observe(ms / 1000)
        self.images.labels(category, result.verdict).inc()
        if result.verification.misalignment_px is not None:
            self.misalignment.labels(category).observe(result.verification.misalignment_px)
        look = result.refine.get("second_look")
        if look is not None:
            self.second_looks.labels(category, "review" if look["candidate"] is None else "rescued").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

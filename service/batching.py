"""Inference off the event loop: a bounded queue and micro-batches per category.

Each category has an ``asyncio.Queue`` of at most ``queue_size`` images and one worker
task. The worker takes the first waiting image, waits up to ``max_wait_ms`` for more
while other requests for the category are still arriving (never past ``max_batch``; a
lone client never waits), and runs ``Inspector.inspect`` on the batch in the shared
single-thread executor (one model call at a time per process: on a CPU, concurrent calls
only fight over the cores; on a GPU, batching is what raises throughput). A full queue
refuses new work at once with 503 and ``Retry-After``; images whose client went away are
dropped before the model call. A batch whose model call fails is run again one image at a
time, so an image that breaks the call fails only its own request.

When a new version of a category's bundle is swapped in (``service/app.py``), its old
batcher is drained, not stopped: every request holds the batcher it started with for its
whole life (``in_use``), and ``drain`` stops the old one once none does.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.inspector import Inspection, Inspector
from service.problems import ServiceError
from service.settings import Settings
from service.telemetry import Telemetry


@dataclass
class _Job:
    image: torch.Tensor  # [H, W, 3] at the bundle's size
    future: asyncio.Future
    queued_at: float  # time.perf_counter() when submitted


class CategoryBatcher:
    def __init__(self, name: str, inspector: Inspector, settings: Settings, executor: Executor, telemetry: Telemetry):
        self.name, self.inspector, self.settings = name, inspector, settings
        self.executor, self.telemetry = executor, telemetry
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.queue_size)
        self._task: asyncio.Task | None = None
        self._arriving = 0  # requests for this category still being received or decoded
        self._users = 0  # requests that hold this batcher (and its inspector), from start to answer
        self._idle = asyncio.Event()
        self._idle.set()
        telemetry.inflight.labels(name)  # exported as 0 from the start, not missing until the first request

    @contextmanager
    def arriving(self):
        """Around a request's upload and decoding: a batch waits up to ``max_wait_ms`` for
        company only while some request is on its way (a lone client never waits)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    @contextmanager
    def in_use(self):
        """Around a whole request that inspects with this batcher's inspector: a batcher that
        was replaced keeps working until the last such request is answered (``drain``)."""
        self._users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Stop once no request holds this batcher (after a new bundle version replaced it)."""
        await self._idle.wait()
        await self.stop()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ServiceError(503, "the service is shutting down"))

    async def submit(self, images: list[torch.Tensor]) -> list[Inspection]:
        """Inspections of ``images`` (all or none are queued)."""
        if self.queue.maxsize - self.queue.qsize() < len(images):
            raise ServiceError(503, f"category {self.name!r} is busy ({self.queue.qsize()} images queued); retry later",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        jobs = [_Job(image, loop.create_future(), now) for image in images]
        for job in jobs:
            self.queue.put_nowait(job)
        self.telemetry.queue.labels(self.name).set(self.queue.qsize())
        inflight = self.telemetry.inflight.labels(self.name)
        inflight.inc(len(jobs))
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:
            for job in jobs:
                job.future.cancel()
            raise
        finally:
            inflight.dec(len(jobs))

    def _inspect(self, images: list[torch.Tensor]) -> list[Inspection]:
        """On the inference thread, like every torch op of the service (``service.app.State``)."""
        return self.inspector.inspect(torch.stack(images))

    def _drain(self, batch: list[_Job]) -> None:
        while len(batch) < self.settings.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())

    async def _one_by_one(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        """After a failed batch: each job inspected alone, its result or its own error to its request."""
        for job in batch:
            if job.future.done():
                continue
            try:
                result = await loop.run_in_executor(self.executor, self._inspect, [job.image])
                if len(result) != 1:
                    raise RuntimeError(f"{len(result)} results for 1 image")
            except Exception as exc:  # noqa: BLE001
                if not job.future.done():
                    job.future.set_exception(exc)
                continue
            if not job.future.done():
                job.future.set_result(result[0])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            self._drain(batch)
            if len(batch) < self.settings.max_batch and self.settings.max_wait_ms > 0 and self._arriving > 0:
                await asyncio.sleep(self.settings.max_wait_ms / 1000)
                self._drain(batch)
            self.telemetry.queue.labels(self.name).set(self.queue.qsize())
            batch = [job for job in batch if not job.future.done()]  # clients that went away
            if not batch:
                continue
            self.telemetry.batch.observe(len(batch))
            start = time.perf_counter()
            for job in batch:
                self.telemetry.phase.labels("queue").observe(start - job.queued_at)
            try:
                results = await loop.run_in_executor(self.executor, self._inspect, [job.image for job in batch])
                took = time.perf_counter() - start
                for _ in batch:
                    self.telemetry.phase.labels("inference").observe(took)
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} images")
            except Exception as exc:  # noqa: BLE001 (handed to the waiting requests; the worker lives on)
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(exc)
                else:  # one image may have failed the batch: each alone, so only its own request fails
                    await self._one_by_one(loop, batch)
                continue
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)

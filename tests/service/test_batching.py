"""The micro-batcher: a full queue answers 503 at once; gone clients are skipped."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.batching import CategoryBatcher
from service.problems import ServiceError
from service.settings import Settings
from service.telemetry import Telemetry


class CountingInspector:
    """Stands in for the model (the real one is exercised in test_app): records batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def inspect(self, images: torch.Tensor):
        self.calls.append(len(images))
        return [float(im.sum()) for im in images]


def test_full_queue_is_refused_with_retry_after() -> None:
    async def scenario() -> None:
        settings = Settings(queue_size=2, max_files_per_batch=2, max_batch=4, retry_after_s=7)
        batcher = CategoryBatcher("c", CountingInspector(), settings, ThreadPoolExecutor(1), Telemetry())
        waiting = asyncio.create_task(batcher.submit([torch.zeros(2, 2, 3)] * 2))  # fills the queue (no worker yet)
        await asyncio.sleep(0)
        with pytest.raises(ServiceError) as info:
            await batcher.submit([torch.zeros(2, 2, 3)])
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "7"
        batcher.start()
        assert await waiting == [0.0, 0.0]
        await batcher.stop()

    asyncio.run(scenario())


def test_concurrent_submissions_share_a_model_call() -> None:
    async def scenario() -> list[int]:
        model = CountingInspector()
        batcher = CategoryBatcher("c", model, Settings(max_batch=4, max_wait_ms=30), ThreadPoolExecutor(1), Telemetry())
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([torch.full((2, 2, 3), float(i))]) for i in range(6)))
        assert [r[0] for r in results] == [12.0 * i for i in range(6)]  # each caller gets its own result
        await batcher.stop()
        return model.calls

    calls = asyncio.run(scenario())
    assert sum(calls) == 6 and max(calls) == 4 and len(calls) == 2


class FlakyInspector(CountingInspector):
    """Fails its first call (a wrong number of results), then works."""

    def inspect(self, images: torch.Tensor):
        out = super().inspect(images)
        return out[:-1] if len(self.calls) == 1 else out


def test_a_failed_batch_fails_its_requests_and_the_worker_lives_on() -> None:
    async def scenario() -> None:
        batcher = CategoryBatcher("c", FlakyInspector(), Settings(max_wait_ms=0), ThreadPoolExecutor(1), Telemetry())
        batcher.start()
        with pytest.raises(RuntimeError, match="results for"):
            await batcher.submit([torch.ones(2, 2, 3)])
        assert await asyncio.wait_for(batcher.submit([torch.ones(2, 2, 3)]), timeout=10) == [12.0]
        await batcher.stop()

    asyncio.run(scenario())


class PoisonedInspector(CountingInspector):
    """Fails any call whose batch holds a NaN image, as a real model call would."""

    def inspect(self, images: torch.Tensor):
        if torch.isnan(images).any():
            raise ValueError("a NaN image")
        return super().inspect(images)


def test_an_image_that_fails_its_batch_fails_only_its_own_request() -> None:
    async def scenario() -> list:
        model = PoisonedInspector()
        batcher = CategoryBatcher("c", model, Settings(max_batch=4, max_wait_ms=30), ThreadPoolExecutor(1), Telemetry())
        images = [torch.ones(2, 2, 3), torch.full((2, 2, 3), float("nan")), torch.full((2, 2, 3), 2.0)]
        waiting = [asyncio.create_task(batcher.submit([im])) for im in images]  # queued together, no worker yet
        await asyncio.sleep(0)
        batcher.start()
        out = await asyncio.gather(*waiting, return_exceptions=True)
        await batcher.stop()
        return out, model.calls

    (good, bad, other), calls = asyncio.run(scenario())
    assert good == [12.0] and other == [24.0]
    assert isinstance(bad, ValueError) and "NaN" in str(bad)
    assert calls == [1, 1]  # the batch of three failed, then the two good ones alone (the NaN one failed alone)


def test_a_batch_waits_for_company_only_while_a_request_is_arriving() -> None:
    async def scenario() -> tuple[float, list[int], list]:
        model = CountingInspector()
        # A wait long against any scheduling delay of a loaded runner: a lone request that waited
        # would take over twice the bound below.
        batcher = CategoryBatcher("c", model, Settings(max_batch=4, max_wait_ms=1500), ThreadPoolExecutor(1),
                                  Telemetry())
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.submit([torch.zeros(2, 2, 3)])  # alone: no wait
        alone = loop.time() - t0

        async def late() -> list:
            with batcher.arriving():
                await asyncio.sleep(0.05)  # still uploading when the first one is queued
            return await batcher.submit([torch.ones(2, 2, 3)])

        arriving = asyncio.create_task(late())
        await asyncio.sleep(0)
        first = await batcher.submit([torch.zeros(2, 2, 3)])
        await arriving
        await batcher.stop()
        return alone, model.calls, first

    alone, calls, first = asyncio.run(scenario())
    assert alone < 0.75 and first == [0.0]
    assert calls == [1, 2]  # the second batch waited for the arriving request



class GatedInspector(CountingInspector):
    """Holds each model call until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()

    def inspect(self, images: torch.Tensor):
        self.entered.set()
        assert self.gate.wait(timeout=10), "the test never opened the gate"
        return super().inspect(images)


def test_inflight_gauge_counts_images_until_answered() -> None:
    """``rpepad_inflight_inspections`` (the autoscaler's metric) rises while images are queued
    or in the model call, falls when they are answered, and ignores refused submissions."""

    def inflight(telemetry: Telemetry) -> float | None:
        return telemetry.registry.get_sample_value("rpepad_inflight_inspections", {"category": "c"})

    async def scenario() -> None:
        model, telemetry = GatedInspector(), Telemetry()
        settings = Settings(queue_size=3, max_files_per_batch=3, max_batch=2, max_wait_ms=0)
        batcher = CategoryBatcher("c", model, settings, ThreadPoolExecutor(1), telemetry)
        assert inflight(telemetry) == 0  # exported before the first request (the autoscaler sees the pod)
        batcher.start()
        first = asyncio.create_task(batcher.submit([torch.zeros(2, 2, 3)] * 2))  # one model call, held at the gate
        second = asyncio.create_task(batcher.submit([torch.ones(2, 2, 3)]))  # queued behind it
        await asyncio.to_thread(model.entered.wait, 10)
        assert inflight(telemetry) == 3
        with pytest.raises(ServiceError):  # 3 more do not fit the 2 free places: refused, not counted
            await batcher.submit([torch.zeros(2, 2, 3)] * 3)
        assert inflight(telemetry) == 3
        model.gate.set()
        assert await first == [0.0, 0.0] and await second == [12.0]
        assert inflight(telemetry) == 0
        await batcher.stop()

    asyncio.run(scenario())

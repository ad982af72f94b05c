"""``rpe-pad serve`` in a child process on a loopback port, for the lab's drivers and the
tests that need the real service (the browser tests, the API contract, records-bench,
gpu-check): start, wait until ready, stop, restart, or kill it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``rpe-pad serve`` in a child process on a loopback port (start, stop, restart, kill)."""

    def __init__(self, bundles: Path, data_dir: Path, api_key: str | None = None, log: Path | None = None,
                 device: str = "cpu", **env: str):
        self.bundles, self.data_dir, self.api_key, self.log = bundles, data_dir, api_key, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "RPEPAD_DEVICE": device, "RPEPAD_DATA_DIR": str(data_dir),
                    "RPEPAD_API_KEY": api_key or "", **env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> Service:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rpe_pad.cli", "serve", "--bundles", str(self.bundles), "--host", "127.0.0.1",
                 "--port", str(self.port)], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own copy
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode} (log: {self.log})")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the service was not ready in {timeout:.0f} s (log: {self.log})")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_all(services: list[Service]) -> None:
    """Start the services together (each loads while the others do); wait until all are
    ready. The caller stops them (each one that started, also when another failed)."""
    with ThreadPoolExecutor(len(services)) as pool:
        for future in [pool.submit(s.start) for s in services]:
            future.result()

"""Checks made of timed steps, for the drivers that prove a machine end to end
(`rpe-pad lab gpu-check`, `rpe-pad lab docker-smoke`): each step's result or error, and the
seconds it took, go into one report."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


class Check:
    """The steps run so far and the report they make; ``name`` prefixes the progress lines."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name
        self.steps: list[dict] = []

    def step(self, name: str, fn: Callable[[], dict]) -> dict | None:
        """Run ``fn``; record its result or its error with the seconds it took."""
        print(f"[{self.name}] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            result, ok, error = fn(), True, None
        except Exception as exc:  # noqa: BLE001 (recorded in the report; the next steps still run)
            result, ok, error = None, False, f"{type(exc).__name__}: {exc}"
        seconds = round(time.perf_counter() - start, 1)
        self.steps.append({"step": name, "ok": ok, "seconds": seconds, "error": error, "result": result})
        print(f"[{self.name}] {name}: {'ok' if ok else 'FAILED: ' + str(error)} ({seconds} s)", flush=True)
        return result

    def skip(self, name: str, reason: str) -> None:
        self.steps.append({"step": name, "ok": False, "seconds": 0.0, "error": f"skipped: {reason}", "result": None})

    @property
    def ok(self) -> bool:
        return all(s["ok"] for s in self.steps)


def run_logged(cmd: list[str], log: Path, timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run ``cmd`` with its output in ``log`` (``env``: added to this process's environment);
    the last lines of the log on failure."""
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                              env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}; log {log}:\n{tail}")
    return log.read_text(errors="replace")

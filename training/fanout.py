"""`rpe-pad train` on several categories at once: one Ray task per category.

``train_many`` connects to the Ray cluster at ``address``, or starts a local Ray instance with
this machine's CPUs (no dashboard, quiet logs), and gives every category one task with its
share of the cluster (``share``): whole CPUs and as many torch threads while there are at
least as many CPUs as categories; with more categories than CPUs, a fraction of a CPU and one
torch thread each, at most two tasks per CPU (three categories on two cores all run at once,
so no core idles while the last one trains alone); and a GPU or an equal fraction of one
where the cluster has GPUs. Each task runs
``training.pipeline.run_train`` exactly as `rpe-pad train` does for one category: the work
folder ``BUNDLES_DIR/.work/<category>/``, then the bundle stage assembles
``BUNDLES_DIR/<category>/`` atomically (``models.bundle.assemble``) and proves it loads. The
folders are passed as absolute paths, so on a cluster of several machines they must be the
same paths on every node (a shared file system). Writing bundles to object storage is not
built.

Failures: a user's mistake (``USER_ERRORS``: a malformed category, a bad argument) fails its
category at once, never retried; any other exception, or a worker or node that dies, is
retried up to ``RETRIES`` times, and the retry resumes from the stages already done
(``run_train`` skips valid outputs). A failed category never stops the others. Progress is
one line per event (started, an attempt failed, done, failed) as it happens.

Ray is optional (``pip install ".[cluster]"``); it is imported inside the functions here only,
so `rpe-pad train` on one category never imports it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_TASKS_PER_CPU = 2  # more categories than CPUs: at most this many one-thread tasks share a CPU
RETRIES = 2  # further attempts of a category after an exception that is not the user's, or a lost worker or node
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError)  # the CLI's users' mistakes: reported, not retried
EXTRA = ('training several categories at once, or on a Ray cluster (--ray), needs Ray, which is not installed: '
         'pip install "rpe-pad[cluster]" (in a checkout: pip install -e ".[cluster]")')
POLL_S = 0.5  # how often the driver looks for progress events while no task ends


@dataclass(frozen=True)
class Share:
    """What one category's task reserves on the cluster."""

    cpus: float  # CPUs Ray reserves for the task: whole ones, or a fraction when tasks outnumber CPUs
    threads: int  # the task's torch threads
    gpus: float  # GPUs (a fraction: tasks share a GPU; 0: CPU only)


@dataclass
class Outcome:
    """One category of a fan-out, as the driver saw it."""

    category: str  # the folder's name: the bundle's name
    folder: Path  # absolute
    reports: dict | None = None  # run_train's reports by stage (training.pipeline.compact) when it succeeded
    seconds: float | None = None  # wall time of the attempt that succeeded, measured in its task
    wall: float | None = None  # when it succeeded: seconds from its first start to its end, all attempts (driver)
    first_start: float | None = None  # the driver's clock when the first attempt's start was seen
    reason: str | None = None  # why it failed
    attempts: int = 0  # attempts that started
    threads: int | None = None  # torch threads the attempt that succeeded ran with

    @property
    def ok(self) -> bool:
        return self.reports is not None


def task_pool(nodes: list[dict]) -> tuple[float, float, float]:
    """The CPUs, the largest node's CPUs and the GPUs the tasks can use, from ``ray.nodes()``:
    with GPUs in the cluster every task takes a share of one, so only the nodes that have GPUs
    count (a task sized by a larger CPU-only node would fit nowhere, and wait for ever), and of
    those only the ones with CPUs to run a task."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    with_gpus = [r for r in alive if r.get("GPU", 0.0) > 0 and r.get("CPU", 0.0) > 0]
    pool = with_gpus or alive
    cpus = sum(r.get("CPU", 0.0) for r in pool)
    return cpus, max((r.get("CPU", 0.0) for r in pool), default=0.0), sum(r.get("GPU", 0.0) for r in with_gpus)


def share(n_tasks: int, cpus: float, node_cpus: float, gpus: float = 0.0) -> Share:
    """Each of ``n_tasks`` tasks' share of a cluster with ``cpus`` CPUs (``node_cpus`` on its
    largest node) and ``gpus`` GPUs.

    CPUs: with at least as many CPUs as tasks, an equal split rounded down to whole CPUs (at
    most one node's), and as many torch threads; the tasks never run more threads than there
    are cores. With more tasks than CPUs, an equal fraction of a CPU and one torch thread, but
    at least ``1 / MAX_TASKS_PER_CPU`` of a CPU: whole CPUs would run the tasks in waves whose
    last one leaves cores idle (3 tasks on 2 CPUs: two at a time, then the third alone on one
    core, 1.22x the serial time in `rpe-pad lab fanout-bench`), while two thirds of a CPU each
    runs all three at once, the kernel sharing the cores among three one-thread processes.
    Ray starts only as many tasks as fit (5 tasks on 2 CPUs: half a CPU each, four at a time).
    GPUs: one each when there are enough, else an equal fraction that packs
    onto whole GPUs (3 tasks on 2 GPUs: half a GPU each); none on a cluster without GPUs."""
    if n_tasks < 1:
        raise ValueError("no categories to train")
    if n_tasks <= cpus:
        per_cpu = max(1, min(int(cpus // n_tasks), int(node_cpus)))
        cpu_share = float(per_cpu)
    else:
        per_cpu = 1
        cpu_share = max(math.floor(1e4 * cpus / n_tasks) / 1e4, 1 / MAX_TASKS_PER_CPU)  # Ray keeps 4 decimals
    whole_gpus = int(gpus)
    if whole_gpus >= n_tasks:
        per_gpu = 1.0
    elif whole_gpus >= 1:
        per_gpu = math.floor(1e4 / math.ceil(n_tasks / whole_gpus)) / 1e4  # Ray keeps 4 decimals
    else:
        per_gpu = 0.0
    return Share(cpu_share, per_cpu, per_gpu)


def import_ray():
    """``ray``, or a ``ValueError`` naming the extra to install (the CLI prints it in one line)."""
    try:
        import ray
    except ImportError as exc:
        if exc.name not in (None, "ray"):  # Ray is there but broken: show the real problem
            raise
        raise ValueError(EXTRA) from None
    return ray


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def reachable(address: str, timeout: float = 5.0) -> None:
    """``ValueError`` saying why when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``; not
    ``auto``) is malformed or nothing answers there: Ray itself would retry for minutes,
    printing only its own C++ warnings."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {address!r}: give auto, HOST:PORT (the head node's GCS, port 6379 by default) "
                         "or ray://HOST:PORT (Ray Client, port 10001 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"--ray {address}: nothing answers there ({exc}); is the Ray head node running, "
                         "and is that its address?") from None


def connect(ray, address: str | None) -> str:
    """Connect to the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or
    start a local instance with this machine's CPUs; returns where, in words."""
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}  # tasks report through the progress lines
    if address:
        reachable(address)
        ray.init(address=address, **quiet)
        return f"the Ray cluster at {address}"
    ray.init(num_cpus=available_cpus(), include_dashboard=False, **quiet)
    return "a local Ray instance"


def check_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders as absolute paths; refused when two would write the same bundle."""
    folders = [Path(f).resolve() for f in folders]
    by_name: dict[str, list[str]] = {}
    for folder in folders:
        by_name.setdefault(folder.name, []).append(str(folder))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        raise ValueError("each category is named after its folder and writes BUNDLES_DIR/<name>: "
                         + "; ".join(f"{name!r} is given {len(paths)} times ({', '.join(paths)})"
                                     for name, paths in clashes.items()))
    return folders


def train_many(folders: Sequence[Path], bundles_dir: Path, preset: str = "cpu", stages: list[str] | None = None,
               address: str | None = None, echo: Callable[[str], None] = print,
               false_alarm_rate: float | None = None) -> list[Outcome]:
    """Train every category in ``folders`` into ``bundles_dir``, one Ray task each, and return
    their outcomes in the order given. ``echo`` receives the progress lines. A Ray connection
    already open in this process is used as it is (``address`` is then ignored).
    ``false_alarm_rate``: as ``run_train``'s, for every category."""
    from training.pipeline import calibration_config, check_stages

    folders = check_folders(folders)
    stages = check_stages(stages) if stages is not None else None
    calibration_config(preset, false_alarm_rate)  # an unknown preset or rate refused here, not in every task
    ray = import_ray()
    bundles_dir = Path(bundles_dir).resolve()
    bundles_dir.mkdir(parents=True, exist_ok=True)
    own = not ray.is_initialized()
    where = connect(ray, address) if own else "the Ray instance this process is connected to"
    try:
        return _fan_out(ray, where, folders, bundles_dir, preset, stages, echo, false_alarm_rate)
    finally:
        if own:
            ray.shutdown()


def _fan_out(ray, where: str, folders: list[Path], bundles_dir: Path, preset: str, stages: list[str] | None,
             echo: Callable[[str], None], false_alarm_rate: float | None = None) -> list[Outcome]:
    from ray.util.queue import Queue

    cpus, node_cpus, gpus = task_pool(ray.nodes())
    cpus, node_cpus = cpus or 1.0, node_cpus or 1.0
    each = share(len(folders), cpus, node_cpus, gpus)
    at_once = min(len(folders), max(1, int(cpus / each.cpus + 1e-6)))
    gpu_text = (f", {gpus:g} GPUs" if gpus else "", f", {each.gpus:g} GPU" if each.gpus else "")
    echo(f"{len(folders)} categories on {where} ({cpus:g} CPUs{gpu_text[0]}): {each.cpus:g} CPU(s) and {each.threads} "
         f"torch thread(s) per category{gpu_text[1]}; {at_once} at a time; up to {RETRIES} retries each")
    events = Queue(actor_options={"num_cpus": 0})  # the tasks' "started" and "attempt failed" lines
    task = ray.remote(_train_task)
    outcomes = {folder.name: Outcome(folder.name, folder) for folder in folders}
    pending = {}
    start = time.perf_counter()

    def say(name: str, text: str) -> None:
        echo(f"[{time.perf_counter() - start:7.1f} s] {name}: {text}")

    for folder in folders:
        ref = task.options(name=f"rpe-pad train {folder.name}", num_cpus=each.cpus, num_gpus=each.gpus,
                           max_retries=RETRIES, retry_exceptions=True).remote(
            str(folder), str(bundles_dir), preset, stages, each.threads, events, false_alarm_rate)
        pending[ref] = folder.name
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            _drain(events, outcomes, say)  # before the results, so a task's start is told before its end
            for ref in done:
                outcome = outcomes[pending.pop(ref)]
                _settle(ray, ref, outcome)
                if outcome.ok:
                    outcome.wall = round(time.perf_counter() - (outcome.first_start or start), 1)
                    bundle = outcome.reports.get("bundle", {}).get("bundle")
                    retried = (f" ({outcome.attempts} attempts, the last {outcome.seconds:.1f} s)"
                               if outcome.attempts > 1 else "")
                    say(outcome.category, f"done in {outcome.wall:.1f} s{retried} on {outcome.threads} torch "
                        "thread(s)" + (f" -> {bundle}" if bundle else ""))
                else:
                    say(outcome.category, f"failed: {outcome.reason}")
    except BaseException:  # Ctrl-C, or the driver failing: leave nothing running on a cluster
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        events.shutdown()
    return [outcomes[folder.name] for folder in folders]


def _drain(events, outcomes: dict[str, Outcome], say: Callable[[str, str], None]) -> None:
    n = events.qsize()
    for kind, name, detail in events.get_nowait_batch(n) if n else ():
        outcome = outcomes[name]
        if kind == "started":
            outcome.attempts += 1
            if outcome.first_start is None:
                outcome.first_start = time.perf_counter()
            again = f"attempt {outcome.attempts} of {RETRIES + 1}, " if outcome.attempts > 1 else ""
            say(name, f"started ({again}{detail})")
        else:
            say(name, f"attempt {outcome.attempts} failed: {detail}"
                + ("; retrying" if outcome.attempts <= RETRIES else ""))


def _settle(ray, ref, outcome: Outcome) -> None:
    """Fill ``outcome`` from its task's result or final error."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the last attempt raised: retries spent
        cause = getattr(exc, "cause", None) or exc
        outcome.reason = f"{type(cause).__name__}: {_one_line(cause)} (after {max(outcome.attempts, 1)} attempts)"
    except ray.exceptions.RayError as exc:  # a worker or node lost on every attempt, or never scheduled
        outcome.reason = f"{type(exc).__name__}: {_one_line(exc)} (after {max(outcome.attempts, 1)} attempts)"
    else:
        if "error" in result:
            outcome.reason = result["error"] + " (not retried: fix the category or the arguments)"
        else:
            outcome.reports, outcome.seconds, outcome.threads = result["reports"], result["seconds"], result["threads"]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _train_task(folder: str, bundles_dir: str, preset: str, stages: list[str] | None, threads: int, events,
                false_alarm_rate: float | None = None) -> dict:
    """One category, in a Ray worker: ``run_train`` with ``threads`` torch threads. A user's
    mistake comes back as ``{"error": ...}`` (so Ray does not retry it); any other exception is
    raised for Ray to retry."""
    import ray

    name = Path(folder).name
    events.put(("started", name, f"on {ray.util.get_node_ip_address()}"))
    start = time.perf_counter()
    import torch

    from training.pipeline import compact, run_train

    torch.set_num_threads(threads)
    try:
        reports = run_train(Path(folder), Path(bundles_dir), preset=preset, stages=stages, progress=False,
                            false_alarm_rate=false_alarm_rate)
    except USER_ERRORS as exc:
        return {"error": f"{type(exc).__name__}: {_one_line(exc)}"}
    except Exception as exc:
        events.put(("attempt_failed", name, f"{type(exc).__name__}: {_one_line(exc)}"))
        raise
    return {"reports": compact(reports), "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads()}


def outcome_table(outcomes: Sequence[Outcome]) -> str:
    """One row per category: done or failed, seconds from its first start to its end, attempts,
    the bundle or the reason."""
    rows = ["| category | result | seconds | attempts | bundle or reason |", "|---|---|---:|---:|---|"]
    for o in outcomes:
        if o.ok:
            rep = o.reports.get("bundle", {})
            what = (f"{rep['bundle']} ({rep.get('files')} files, {rep.get('bytes', 0) / 1e6:.1f} MB)" if "bundle" in rep
                    else "no bundle stage run")
            rows.append(f"| {o.category} | done | {o.wall:.1f} | {o.attempts} | {what} |")
        else:
            rows.append(f"| {o.category} | failed | | {o.attempts} | {o.reason} |")
    return "\n".join(rows)

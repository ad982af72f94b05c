"""``rpe-pad serve``'s uvicorn server, with a drain before it stops (``RPEPAD_DRAIN_S``).

On SIGTERM (or SIGINT) uvicorn closes its listening socket at once, closes the connections
that have no request in progress, and finishes the requests in flight. Behind a load
balancer that is not quite enough: until the balancer's health check notices, it keeps
sending requests. One that meets the closed socket is refused, and the balancer retries it
on another replica; but a connection the kernel (or uvicorn) had already accepted whose
request uvicorn had not read yet is closed unanswered, and the balancer cannot tell whether
that request ran, so it answers 502. With ``drain_s`` > 0 the first signal only starts a
drain: ``/readyz`` answers 503 while every request is served as before, so the balancer
takes the replica out of rotation; after ``drain_s`` seconds uvicorn's own graceful
shutdown runs, with nothing left arriving. A second signal ends the drain at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first exit signal starts a drain of ``drain_s`` seconds
    (``on_drain`` is called then, from the signal handler: it should only set a flag)."""

    def __init__(self, config: uvicorn.Config, drain_s: float, on_drain: Callable[[], None]):
        super().__init__(config)
        self.drain_s, self.on_drain = drain_s, on_drain
        self.drain_until: float | None = None
        self._drain_signal: int | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain_s > 0 and self.drain_until is None and not self.should_exit:
            self.drain_until, self._drain_signal = time.monotonic() + self.drain_s, sig
            self.on_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_signal is not None and not self._announced:  # not from the signal handler: it may hold a lock
            self._announced = True
            logging.getLogger("rpe_pad.service").info("draining for %g s (/readyz answers 503), then stopping",
                                                      self.drain_s)
        if self._drain_signal is not None and time.monotonic() >= self.drain_until:
            sig, self._drain_signal = self._drain_signal, None
            super().handle_exit(sig, None)  # uvicorn's graceful shutdown, and its exit status, from here on
        return await super().on_tick(counter)


def check_address(host: str, port: int) -> None:
    """``ValueError`` naming the option when the service could not listen on ``host:port``
    (taken by another process, not an address of this machine, a port that needs privileges).
    Tried as uvicorn's asyncio server binds: every address the host resolves to (an empty host:
    every interface), each with ``SO_REUSEADDR`` and an IPv6 one with ``IPV6_V6ONLY``; the
    sockets are closed at once."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: not an address ({exc.strerror})") from None
    with contextlib.ExitStack() as stack:
        for family, kind, proto, _, address in dict.fromkeys(found):
            probe = stack.enter_context(socket.socket(family, kind, proto))
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _bind(probe, address, host, port)


def _bind(probe: socket.socket, address: tuple, host: str, port: int) -> None:
    try:
        probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"--port {port}: {host}:{port} is in use by another process (stop it, or choose "
                             "another --port)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host {host}: not an address of this machine") from None
        if exc.errno == errno.EACCES:
            raise ValueError(f"--port {port}: not allowed to listen there ({exc.strerror}; ports under 1024 "
                             "need privileges)") from None
        raise


def run(app: FastAPI, host: str, port: int, drain_s: float) -> None:
    """Serve ``app`` until a signal (after a drain of ``drain_s`` seconds; 0: none)."""

    def draining() -> None:
        app.state.draining = True

    config = uvicorn.Config(app, host=host, port=port, log_level="info")
    DrainingServer(config, drain_s, draining).run()

"""``serve --workers N``: N gateway processes on one port.

One Python process relays on one core, whatever the machine has; workers, each
with its own event loop, put the others to use. Each worker is a node of its
own (``NODE-wK``) and shares the store and the bus as nodes do; the kernel
spreads new connections over them (SO_REUSEPORT). They start one after
another, so each measures its CPU threads and migrates the store on a machine
the others do not load yet. One that dies is started again, and marks its
lost sessions as a node restarting after a crash does.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType

from sonicgate import metrics

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESTART_SECONDS = 1.0  # before a worker that died is started again
# A worker reports ready once it listens: loading the local models and measuring
# their threads takes a minute on a slow machine.
READY_SECONDS = 600.0

# Runs in the worker: serve on the socket, call the event once listening, return
# the exit code. Must be picklable (a module's function, or a partial of one).
Worker = Callable[[int, socket.socket, Event], int]


def worker_node_id(node_id: str, index: int) -> str:
    return f"{node_id}-w{index}"


def shared_socket(host: str, port: int) -> socket.socket:
    """A socket on ``host:port`` that the other workers' sockets may bind too; the
    kernel hands each new connection to one of them."""
    return _bound(host, port, shared=True)


def check_port_free(host: str, port: int) -> None:
    """Raises ``OSError`` if anything listens on ``host:port``: the workers' shared
    sockets would otherwise join another gateway's (SO_REUSEPORT, same user)."""
    _bound(host, port, shared=False).close()


def _bound(host: str, port: int, shared: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _run(worker: Worker, index: int, host: str, port: int, ready: Event, supervisor: int) -> None:
    # Alone in its process group: a terminal's Ctrl-C reaches the supervisor, which
    # passes one SIGTERM on (a second signal would make uvicorn quit at once).
    os.setpgrp()
    # A supervisor killed outright takes its workers along (gracefully): else they
    # would hold the port, unsupervised.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above
        raise SystemExit(1)
    raise SystemExit(worker(index, shared_socket(host, port), ready))


class Supervisor:
    def __init__(self, worker: Worker, count: int, host: str, port: int) -> None:
        self._worker = worker
        self._count = count
        self._host = host
        self._port = port
        self._context = multiprocessing.get_context("spawn")  # no inherited loop or threads
        self._workers: dict[int, BaseProcess] = {}
        self._ready: dict[int, Event] = {}  # each worker's "listening" signal
        self._stopping = False

    def run(self) -> int:
        """Starts the workers, keeps them running until SIGTERM or SIGINT, then stops
        them gracefully. 1 if a worker could not start."""
        handlers = {signum: signal.signal(signum, self._stop) for signum in STOP_SIGNALS}
        try:
            with metrics.shared_between_processes():  # a scrape of any worker sums all
                return self._supervise()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def _supervise(self) -> int:
        for index in range(self._count):
            if not self._start(index, wait_ready=True):
                failed = not self._stopping  # else stopped while starting: not a failure
                self._stop(signal.SIGTERM, None)
                self._join()
                return 1 if failed else 0
        log.info("%d workers listening on %s:%d", self._count, self._host, self._port)
        while not self._stopping:
            wait([process.sentinel for process in self._workers.values()])
            for index, process in list(self._workers.items()):
                if process.is_alive() or self._stopping:
                    continue
                log.error("worker %d exited (code %s): starting it again", index, process.exitcode)
                if process.pid is not None:
                    metrics.process_ended(process.pid)
                time.sleep(RESTART_SECONDS)
                if not self._stopping:  # a stop during the pause: no new worker
                    self._start(index, wait_ready=False)
        self._join()
        return 0

    def _start(self, index: int, wait_ready: bool) -> bool:
        ready = self._context.Event()
        process = self._context.Process(
            target=_run,
            args=(self._worker, index, self._host, self._port, ready, os.getpid()),
            name=f"sonicgate-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        # Kept while the worker lives: start() drops its copy of the arguments, and a
        # child still unpickling its Event fails once the parent's last reference goes.
        self._ready[index] = ready
        if not wait_ready:
            return True
        deadline = time.monotonic() + READY_SECONDS
        while not ready.wait(0.2):
            if self._stopping:
                return False
            if not process.is_alive() or time.monotonic() > deadline:
                log.error("worker %d did not start (exit code %s)", index, process.exitcode)
                return False
        return True

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping %d workers (%s)", len(self._workers), signal.Signals(signum).name)
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def _join(self) -> None:
        for process in self._workers.values():
            process.join()

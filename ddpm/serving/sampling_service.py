"""Heavy requests out of the web server's process: a ``FairQueue`` drained by sampling worker processes.

A page's script thread only submits, waits and draws: ``submit`` puts the request in line (or joins an
identical one), ``wait`` blocks until it is done while telling the page its place and ETA, and raises if
the request failed or was dropped. One dispatcher thread per worker takes the oldest request, sends it
(and the model, the first time that worker needs it) over a pipe, relays progress, and asks the worker to
stop a request nobody waits for or one past its deadline; a worker that does not stop in time, or dies, is
killed and replaced. Workers are spawned (never forked: torch's threads do not survive a fork), so none
outlives the server: they exit on EOF of their pipe, at interpreter exit (``shutdown``), or when their
watchdog sees the server is gone.
"""
from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import os
import threading
import time
import weakref
from typing import Any, Callable, Hashable

from .queue import FairQueue, Position, RequestCancelled, Ticket
from .sampling_worker import ModelPayload, SampleRequest, serve

STOP_GRACE_S = 10.0  # a worker asked to stop gets this long (one network call) before it is killed


class RequestFailed(RuntimeError):
    """The request could not be computed; the message says why, for the visitor."""


class _Worker:
    """One worker process, its pipe and its cancel flag, driven by one dispatcher thread."""

    def __init__(self, service: "SamplingService", index: int):
        self.service, self.index = service, index
        self.process = None
        self.conn = None
        self.cancel_event = None
        self.known: set[str] = set()  # model keys sent to the current process
        self.thread = threading.Thread(target=self._dispatch, daemon=True, name=f"ddpm-sampling-dispatch-{index}")

    def start_process(self) -> None:
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        self.cancel_event = ctx.Event()
        self.process = ctx.Process(target=serve, args=(child_end, self.cancel_event, self.service.threads, os.getpid()),
                                   daemon=True, name=f"ddpm-sampling-worker-{self.index}")
        self.process.start()
        child_end.close()
        self.conn, self.known = parent_end, set()

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None

    def stop(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        self.kill()

    def _dispatch(self) -> None:
        queue = self.service.queue
        while not self.service.closed.is_set():
            ticket = queue.next(timeout=0.5)
            if ticket is None:
                continue
            try:
                self._run(ticket)
            except Exception as err:  # noqa: BLE001 - the dispatcher must survive anything a worker does
                queue.finish(ticket, error=f"the sampling worker failed: {type(err).__name__}: {err}")
                self.kill()
            self.service.log(ticket)

    def _run(self, ticket: Ticket) -> None:
        queue = self.service.queue
        request, payload, _ = ticket.payload
        deadline_s = self.service.deadline_for(ticket)
        if self.process is None or not self.process.is_alive():
            self.kill()
            self.start_process()
        self.cancel_event.clear()
        self.conn.send(("run", ticket.seq, request, None if payload.key in self.known else payload, deadline_s))
        self.known.add(payload.key)
        started, asked_to_stop = time.monotonic(), None
        while True:
            try:
                message = self.conn.recv() if self.conn.poll(0.1) else None
            except (EOFError, OSError):  # the worker's end closed: it died
                queue.finish(ticket, error="the sampling worker stopped unexpectedly; please try again")
                self.kill()
                return
            if message is not None:
                kind = message[0]
                if kind == "missing":  # the worker dropped that model: send it again
                    self.conn.send(("run", ticket.seq, request, payload, deadline_s))
                elif kind == "progress":
                    queue.report(ticket, message[2])
                elif kind == "done":
                    queue.finish(ticket, result=message[2])
                    return
                elif kind == "error":
                    queue.finish(ticket, error=message[2])
                    return
                elif kind == "cancelled":
                    queue.finish(ticket, error=message[2], cancelled=True)
                    return
            elif not self.process.is_alive():
                queue.finish(ticket, error="the sampling worker stopped unexpectedly; please try again")
                self.kill()
                return
            now = time.monotonic()
            if asked_to_stop is None and queue.should_cancel(ticket):
                self.cancel_event.set()  # the worker stops at its next network call
                asked_to_stop = now
            if asked_to_stop is None and now - started > deadline_s:
                asked_to_stop = now  # the worker stops itself at its deadline; if it cannot, it is killed below
            if asked_to_stop is not None and now - asked_to_stop > STOP_GRACE_S:
                queue.finish(ticket, error=f"the request ran past its deadline of {deadline_s:.0f} s and was stopped",
                             cancelled=True)
                self.kill()  # it did not stop between two network calls: its process goes, a new one starts
                return


class SamplingService:
    """``workers`` sampling processes with ``threads`` torch threads each, fed by one fair queue. A request runs
    at most its own deadline (given to ``submit``), and never more than ``max_deadline_s``."""

    def __init__(self, workers: int = 1, threads: int | None = None, max_deadline_s: float = 600.0,
                 log_path: str | os.PathLike | None = None):
        if workers < 1:
            raise ValueError(f"a sampling service needs at least one worker, got {workers}")
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.queue = FairQueue(workers=workers)
        self.max_deadline_s = max_deadline_s
        self.log_path = log_path
        self._log_lock = threading.Lock()
        self.closed = threading.Event()
        self._payloads: dict[str, ModelPayload] = {}
        self._workers = [_Worker(self, i) for i in range(workers)]
        for worker in self._workers:
            worker.start_process()
            worker.thread.start()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def log(self, ticket: Ticket) -> None:
        """Append one JSON line per finished request to ``log_path`` (if set): what it was, how it ended, and the
        seconds it waited in line and computed, measured on the server (bench/crowd_check.py reads it)."""
        if self.log_path is None:
            return
        request, _, _ = ticket.payload
        line = {"kind": request.kind, "n": request.n, "sampler": request.spec.sampler, "steps": request.spec.steps,
                "seed": request.seed, "status": ticket.status, "visitors": len(ticket.visitors),
                "queued_s": ticket.queued_s, "compute_s": ticket.compute_s, "work": ticket.work,
                "finished_unix": time.time()}
        with self._log_lock, open(self.log_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    def deadline_for(self, ticket: Ticket) -> float:
        _, _, deadline_s = ticket.payload
        return self.max_deadline_s if deadline_s is None else min(self.max_deadline_s, deadline_s)

    # ---- the page's side ----------------------------------------------------------------------
    def submit(self, visitor: Hashable, model: ModelPayload, request: SampleRequest, work: float,
               deadline_s: float | None = None) -> Ticket:
        """Put ``request`` in line for ``visitor`` (replacing their previous one; joining an identical one). ``work``
        is its cost (e.g. FLOPs: the ETA divides it by the measured speed); past ``deadline_s`` it is stopped."""
        if request.model_key != model.key:
            raise ValueError("the request names another model than the one given")
        key = (request.model_key, request.kind, request.spec, request.seed, request.n, request.classes, request.precision)
        return self.queue.submit(visitor, key, (request, model, deadline_s), work)

    def wait(self, visitor: Hashable, ticket: Ticket, on_wait: Callable[[Position], None] | None = None,
             every_s: float = 0.5) -> Any:
        """The result of ``ticket``; ``on_wait(position)`` is called while it waits or runs. If ``on_wait`` raises
        (the visitor left or clicked again), the visitor leaves the line and the exception goes on."""
        try:
            while not ticket.done.wait(every_s):
                if on_wait is not None:
                    on_wait(self.queue.position(ticket))
        except BaseException:
            self.queue.leave(visitor, ticket)
            raise
        if ticket.status == "done":
            return ticket.result
        if ticket.status == "cancelled":
            raise RequestCancelled(ticket.error or "the request was replaced by a newer one")
        raise RequestFailed(ticket.error or "the request failed")

    def run(self, visitor: Hashable, model: ModelPayload, request: SampleRequest, work: float,
            on_wait: Callable[[Position], None] | None = None, deadline_s: float | None = None) -> Any:
        return self.wait(visitor, self.submit(visitor, model, request, work, deadline_s), on_wait)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel what waits, stop the workers (killing any that do not stop) and end the dispatchers."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.queue.close()
        for worker in self._workers:
            if worker.cancel_event is not None:
                worker.cancel_event.set()
        for worker in self._workers:
            worker.thread.join(timeout)
            worker.stop(timeout)


def _shutdown_at_exit(ref: "weakref.ref[SamplingService]") -> None:
    service = ref()
    if service is not None:
        service.shutdown(timeout=5.0)

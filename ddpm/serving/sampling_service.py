"""Heavy requests out of the web server's process: fair queues drained by sampling worker processes.

A page's script thread only submits, waits and draws: ``submit`` puts the request in line (or joins an
identical one), ``wait`` blocks until it is done while telling the page its place and ETA, and raises if
the request failed or was dropped. There are two lanes: interactive requests (a few seconds of work: Generate,
New samples) and heavy ones (expected to run longer than ``heavy_after_s``: an evaluation, DDPM over many
steps, a large uploaded network). The heavy lane has a worker of its own at a lower OS priority, so a heavy
request, however costly within the budget, never holds up a visitor's Generate; it only takes what is left. One dispatcher thread per worker takes the oldest request, sends it
(and the model, the first time that worker needs it) over a pipe, relays progress, and asks the worker to
stop a request nobody waits for or one past its deadline; a worker that does not stop in time, or dies, is
killed and replaced. Workers are forked from the server's forkserver, which has torch imported once for all
its children (``processes``), never from the server itself (torch's threads do not survive a fork). None
outlives the server: they exit on EOF of their pipe, at interpreter exit (``shutdown``), or when their
watchdog sees the server is gone.
"""
from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from typing import Any, Callable, Hashable

from dataclasses import dataclass

from .processes import child, context
from .queue import FairQueue, Position, RequestCancelled, Ticket
from .sampling_worker import ModelPayload, SampleRequest, serve

STOP_GRACE_S = 10.0  # a worker asked to stop gets this long (one network call) before it is killed
INTERACTIVE, HEAVY = "interactive", "heavy"
HEAVY_AFTER_S = 20.0  # requests expected to take longer go to the heavy lane
HEAVY_NICE = 10  # the heavy lane's worker priority: it gets about a tenth of a core an interactive worker wants
HEAVY_IDLE_S = 60.0  # the heavy lane's process ends after this long without work (its memory goes back)


@dataclass(frozen=True)
class Job:
    """What a ticket carries: the request, its model, its deadline and its lane."""

    request: SampleRequest
    model: ModelPayload
    deadline_s: float | None
    lane: str


class RequestFailed(RuntimeError):
    """The request could not be computed; the message says why, for the visitor."""


class _Worker:
    """One worker process, its pipe and its cancel flag, driven by one dispatcher thread."""

    def __init__(self, service: "SamplingService", index: int, queue: FairQueue, nice: int = 0,
                 idle_stop_s: float | None = None):
        self.service, self.index, self.queue, self.nice = service, index, queue, nice
        self.idle_stop_s = idle_stop_s  # end the process after this long without work (None: keep it)
        self.process = None
        self.conn = None
        self.cancel_event = None
        self.known: set[str] = set()  # model keys sent to the current process
        self.thread = threading.Thread(target=self._dispatch, daemon=True, name=f"ddpm-sampling-dispatch-{index}")

    def start_process(self) -> None:
        ctx = context()
        parent_end, child_end = ctx.Pipe()
        self.cancel_event = ctx.Event()
        self.process = child(serve, (child_end, self.cancel_event, self.service.threads, os.getpid(), self.nice),
                             f"ddpm-sampling-worker-{self.index}")
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
        queue = self.queue
        idle_since = time.monotonic()
        while not self.service.closed.is_set():
            ticket = queue.next(timeout=0.5)
            if ticket is None:
                if self.idle_stop_s is not None and self.process is not None \
                        and time.monotonic() - idle_since > self.idle_stop_s:
                    self.stop(5.0)
                continue
            try:
                self._run(ticket)
            except Exception as err:  # noqa: BLE001 - the dispatcher must survive anything a worker does
                queue.finish(ticket, error=f"the sampling worker failed: {type(err).__name__}: {err}")
                self.kill()
            self.service.log(ticket)
            idle_since = time.monotonic()

    def _run(self, ticket: Ticket) -> None:
        queue = self.queue
        request, payload = ticket.payload.request, ticket.payload.model
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
    """``workers`` interactive sampling processes and one heavy-lane process (unless ``heavy_after_s`` is None),
    with ``threads`` torch threads each, each lane fed by its fair queue. A request runs at most its own deadline
    (given to ``submit``), and never more than ``max_deadline_s``."""

    def __init__(self, workers: int = 1, threads: int | None = None, max_deadline_s: float = 600.0,
                 log_path: str | os.PathLike | None = None, heavy_after_s: float | None = HEAVY_AFTER_S,
                 heavy_nice: int = HEAVY_NICE):
        if workers < 1:
            raise ValueError(f"a sampling service needs at least one worker, got {workers}")
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.queue = FairQueue(workers=workers)
        self.heavy_after_s = heavy_after_s
        self.lanes = {INTERACTIVE: self.queue}
        if heavy_after_s is not None:
            self.lanes[HEAVY] = FairQueue(workers=1)
        self.max_deadline_s = max_deadline_s
        self.log_path = log_path
        self._log_lock = threading.Lock()
        self.closed = threading.Event()
        self._workers = [_Worker(self, i, self.queue) for i in range(workers)]
        for worker in self._workers:
            worker.start_process()  # ready before the first visitor asks
        if heavy_after_s is not None:  # its process starts with the first heavy request: most servers never see one
            self._workers.append(_Worker(self, workers, self.lanes[HEAVY], heavy_nice, idle_stop_s=HEAVY_IDLE_S))
        for worker in self._workers:
            worker.thread.start()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def log(self, ticket: Ticket) -> None:
        """Append one JSON line per finished request to ``log_path`` (if set): what it was, how it ended, and the
        seconds it waited in line and computed, measured on the server (bench/crowd_check.py reads it)."""
        if self.log_path is None:
            return
        request = ticket.payload.request
        line = {"lane": ticket.payload.lane, "kind": request.kind, "edit": request.edit and request.edit.op, "n": request.n, "sampler": request.spec.sampler, "steps": request.spec.steps,
                "seed": request.seed, "status": ticket.status, "visitors": len(ticket.visitors),
                "queued_s": ticket.queued_s, "compute_s": ticket.compute_s, "work": ticket.work,
                "finished_unix": time.time()}
        # when it entered the line, on the wall clock, so a bench can line it up with the browser's click
        line["submitted_unix"] = line["finished_unix"] - (time.monotonic() - ticket.submitted_at)
        with self._log_lock, open(self.log_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    def deadline_for(self, ticket: Ticket) -> float:
        deadline_s = ticket.payload.deadline_s
        return self.max_deadline_s if deadline_s is None else min(self.max_deadline_s, deadline_s)

    def queue_of(self, ticket: Ticket) -> FairQueue:
        return self.lanes[ticket.payload.lane]

    # ---- the page's side ----------------------------------------------------------------------
    def submit(self, visitor: Hashable, model: ModelPayload, request: SampleRequest, work: float,
               deadline_s: float | None = None, expected_s: float | None = None) -> Ticket:
        """Put ``request`` in line for ``visitor`` (replacing their previous one, in either lane; joining an identical
        one). ``work`` is its cost (e.g. FLOPs: the ETA divides it by the measured speed); past ``deadline_s`` it is
        stopped; expected to take longer than ``heavy_after_s`` (``expected_s``), it goes to the heavy lane."""
        if request.model_key != model.key:
            raise ValueError("the request names another model than the one given")
        heavy = HEAVY in self.lanes and expected_s is not None and expected_s > self.heavy_after_s
        lane = HEAVY if heavy else INTERACTIVE
        for name, queue in self.lanes.items():
            if name != lane:
                queue.withdraw(visitor)  # one request in flight per visitor, whichever lane it was in
        key = (request.model_key, request.kind, request.spec, request.seed, request.n, request.classes, request.precision,
               request.edit)
        return self.lanes[lane].submit(visitor, key, Job(request, model, deadline_s, lane), work)

    def wait(self, visitor: Hashable, ticket: Ticket, on_wait: Callable[[Position], None] | None = None,
             every_s: float = 0.5) -> Any:
        """The result of ``ticket``; ``on_wait(position)`` is called while it waits or runs. If ``on_wait`` raises
        (the visitor left or clicked again), the visitor leaves the line and the exception goes on."""
        queue = self.queue_of(ticket)
        try:
            while not ticket.done.wait(every_s):
                if on_wait is not None:
                    on_wait(queue.position(ticket))
        except BaseException:
            queue.leave(visitor, ticket)
            raise
        if ticket.status == "done":
            return ticket.result
        if ticket.status == "cancelled":
            raise RequestCancelled(ticket.error or "the request was replaced by a newer one")
        raise RequestFailed(ticket.error or "the request failed")

    def run(self, visitor: Hashable, model: ModelPayload, request: SampleRequest, work: float,
            on_wait: Callable[[Position], None] | None = None, deadline_s: float | None = None,
            expected_s: float | None = None) -> Any:
        return self.wait(visitor, self.submit(visitor, model, request, work, deadline_s, expected_s), on_wait)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel what waits, stop the workers (killing any that do not stop) and end the dispatchers."""
        if self.closed.is_set():
            return
        self.closed.set()
        for queue in self.lanes.values():
            queue.close()
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

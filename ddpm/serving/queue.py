"""A fair line for heavy requests: first come, first served, one request in flight per visitor, identical
requests computed once.

Pure bookkeeping (no torch, no processes): ``SamplingService`` feeds it and its workers drain it.

- A visitor's ``submit`` joins the line at the back, or joins an identical request already there (same key:
  the same weights' sha256, settings and seed), which keeps its place.
- A visitor has at most one request in flight: a new submit replaces the old one. A request nobody waits
  for any more (its visitors replaced it or left) is dropped from the line, or cancelled if it is running.
- ``position`` tells a waiting visitor how many requests are ahead and, from the measured speed of
  finished ones, about how long until theirs is done.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Hashable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class RequestCancelled(RuntimeError):
    """The request was dropped: its visitors replaced it or left, or the server is shutting down."""


@dataclass(eq=False)
class Ticket:
    """One request in the line and, once finished, its result. Every field is guarded by the queue's lock."""

    key: Hashable
    payload: Any  # what a worker needs to compute it
    work: float  # its cost in the units ``speed`` measures (e.g. network FLOPs)
    seq: int
    submitted_at: float
    visitors: set = field(default_factory=set)
    status: str = QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0  # fraction done while running
    result: Any = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def queued_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.submitted_at

    @property
    def compute_s(self) -> float | None:
        return None if self.finished_at is None or self.started_at is None else self.finished_at - self.started_at


@dataclass(frozen=True)
class Position:
    """Where a waiting request stands: requests ahead of it (running ones included) and the seconds until it
    should be done (None before any speed has been measured)."""

    ahead: int
    eta_s: float | None
    running: bool
    progress: float


class WaitingBar:
    """What a waiting visitor's progress bar says, and when it changes.

    Each change is a message to the visitor's browser, which redraws the page: with ten tabs waiting in one
    Chromium a redraw cost about 40 ms of its CPU with Streamlit's animated bar, 5-10 ms with the app's style
    (bench/browser_wait.py, two runs), and where the browser shares the server's cores (bench/crowd_check.py) its CPU is
    the workers' CPU. So the bar changes only when the visitor's place
    changes, when their request starts, at each quarter of its progress, and otherwise every ``heartbeat_s`` (a
    call into Streamlit is where a visitor who left or clicked again is noticed); the ETA shown is refreshed with
    each change, in 5 s steps.
    """

    QUARTERS = 4

    def __init__(self, text: str, at_once: int, heartbeat_s: float = 5.0, clock=time.monotonic):
        self.text, self.at_once, self.heartbeat_s, self.clock = text, at_once, heartbeat_s, clock
        self._state: tuple | None = None
        self._drawn_at = -float("inf")

    def words(self, position: Position) -> tuple[float, str]:
        """(fraction done, words) for ``position``."""
        eta = "" if position.eta_s is None else f", about {max(5, 5 * round(position.eta_s / 5))} s"
        if position.running:
            done = int(position.progress * self.QUARTERS) / self.QUARTERS
            return done, f"{self.text} {done:.0%}{eta}"
        ahead = position.ahead
        return 0.0, (f"Waiting for your turn: {ahead} request{'s' if ahead != 1 else ''} ahead of yours{eta} "
                     f"(this server computes {self.at_once} at a time, first come first served)…")

    def update(self, position: Position) -> tuple[float, str] | None:
        """What to draw now, or None to leave the bar as it is."""
        state = (position.running, position.ahead, int(position.progress * self.QUARTERS))
        now = self.clock()
        if state == self._state and now - self._drawn_at < self.heartbeat_s:
            return None
        self._state, self._drawn_at = state, now
        return self.words(position)


class FairQueue:
    """First come, first served across visitors; see the module docstring."""

    def __init__(self, workers: int = 1, initial_speed: float | None = None, smoothing: float = 0.3):
        self.workers = workers  # how many requests run at once, for the ETA
        self._lock = threading.Condition()
        self._line: list[Ticket] = []  # queued, oldest first
        self._running: list[Ticket] = []
        self._by_key: dict[Hashable, Ticket] = {}  # queued or running
        self._of_visitor: dict[Hashable, Ticket] = {}
        self._seq = itertools.count()
        self._closed = False
        self.speed = initial_speed  # work per second, measured on finished requests
        self._smoothing = smoothing

    # ---- the visitor's side ---------------------------------------------------------------------
    def submit(self, visitor: Hashable, key: Hashable, payload: Any, work: float) -> Ticket:
        """The visitor's request for ``key``: an identical one in the line or running, else a new one at the back.
        The visitor's previous request, if another, is given up."""
        with self._lock:
            if self._closed:
                raise RequestCancelled("the server is shutting down")
            ticket = self._by_key.get(key)
            if ticket is None:
                ticket = Ticket(key, payload, work, next(self._seq), time.monotonic())
                self._line.append(ticket)
                self._by_key[key] = ticket
                self._lock.notify_all()
            previous = self._of_visitor.get(visitor)
            if previous is not None and previous is not ticket:
                self._leave(visitor, previous)
            ticket.visitors.add(visitor)
            self._of_visitor[visitor] = ticket
            return ticket

    def withdraw(self, visitor: Hashable) -> None:
        """The visitor gives up whatever request they have in this line (they asked for something elsewhere)."""
        with self._lock:
            ticket = self._of_visitor.get(visitor)
            if ticket is not None:
                self._leave(visitor, ticket)

    def leave(self, visitor: Hashable, ticket: Ticket) -> None:
        """The visitor no longer waits for ``ticket`` (they left, or their page moved on)."""
        with self._lock:
            self._leave(visitor, ticket)

    def position(self, ticket: Ticket) -> Position:
        with self._lock:
            if ticket.status == RUNNING:
                left = ticket.work * (1 - ticket.progress)
                return Position(0, None if not self.speed else left / self.speed, True, ticket.progress)
            if ticket.status != QUEUED:
                return Position(0, 0.0, False, 1.0)
            place = self._line.index(ticket)
            ahead = self._running + self._line[:place]
            if not self.speed:
                return Position(len(ahead), None, False, 0.0)
            backlog = sum(t.work * (1 - t.progress) for t in ahead) / max(1, self.workers)
            return Position(len(ahead), (backlog + ticket.work) / self.speed, False, 0.0)

    # ---- the workers' side ----------------------------------------------------------------------
    def next(self, timeout: float | None = None) -> Ticket | None:
        """The oldest queued request, now marked running; None after ``timeout`` seconds or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._line and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._lock.wait(left)
            if self._closed:
                return None
            ticket = self._line.pop(0)
            ticket.status, ticket.started_at = RUNNING, time.monotonic()
            self._running.append(ticket)
            return ticket

    def report(self, ticket: Ticket, progress: float) -> None:
        with self._lock:
            ticket.progress = min(max(progress, 0.0), 1.0)

    def should_cancel(self, ticket: Ticket) -> bool:
        """Whether nobody waits for this running request any more."""
        with self._lock:
            return ticket.status == RUNNING and not ticket.visitors

    def finish(self, ticket: Ticket, result: Any = None, error: str | None = None, cancelled: bool = False) -> None:
        """Record the outcome, wake its waiters and measure the speed (of successful runs)."""
        with self._lock:
            ticket.finished_at = time.monotonic()
            ticket.status = CANCELLED if cancelled else FAILED if error is not None else DONE
            ticket.result, ticket.error = result, error
            if ticket in self._running:
                self._running.remove(ticket)
            if self._by_key.get(ticket.key) is ticket:
                del self._by_key[ticket.key]
            for visitor in list(ticket.visitors):
                if self._of_visitor.get(visitor) is ticket:
                    del self._of_visitor[visitor]
            if ticket.status == DONE and ticket.compute_s and ticket.work > 0:
                measured = ticket.work / ticket.compute_s
                self.speed = measured if not self.speed else (1 - self._smoothing) * self.speed + self._smoothing * measured
            ticket.done.set()
            self._lock.notify_all()

    def close(self) -> None:
        """No new requests; queued ones are cancelled (running ones end through their workers)."""
        with self._lock:
            self._closed = True
            queued, self._line = self._line, []
            self._lock.notify_all()
        for ticket in queued:
            self.finish(ticket, cancelled=True)

    # ---- inspection (tests, bench) --------------------------------------------------------------
    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._line)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def _leave(self, visitor: Hashable, ticket: Ticket) -> None:
        ticket.visitors.discard(visitor)
        if self._of_visitor.get(visitor) is ticket:
            del self._of_visitor[visitor]
        if ticket.visitors or ticket.status != QUEUED:
            return  # others still wait, or it is running (its worker sees should_cancel) or over
        self._line.remove(ticket)
        del self._by_key[ticket.key]
        ticket.status, ticket.finished_at = CANCELLED, time.monotonic()
        ticket.done.set()

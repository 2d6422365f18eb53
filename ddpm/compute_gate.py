"""A server-wide bound on heavy computations (sampling runs, evaluations): at most ``slots`` at once,
the others wait in line, first come first served, and are told their place while they wait.

On a 2-core server, eight visitors who each start an evaluation would otherwise run eight at once
and all finish late; in line, each one finishes in its turn and sees why it waits.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


class ComputeGate:
    """``with gate.slot(on_wait): compute()`` runs ``compute`` once one of the ``slots`` is free.

    ``on_wait(ahead)`` is called (in the waiting thread, outside the gate's lock) each time the number
    of computations ahead of this one changes: running ones and those earlier in line.  If it raises
    (e.g. the visitor left), the place in line is given up.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"a compute gate needs at least 1 slot, got {slots}")
        self.slots = slots
        self._running = 0
        self._line: list[object] = []
        self._cond = threading.Condition()

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    def _ahead(self, ticket: object) -> int | None:
        """Computations ahead of ``ticket``, or None when it may run now (lock held)."""
        place = self._line.index(ticket)
        if place == 0 and self._running < self.slots:
            return None
        return self._running + place

    @contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        ticket = object()
        told = None
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                with self._cond:
                    ahead = self._ahead(ticket)
                    if ahead is None:
                        self._line.remove(ticket)
                        self._running += 1
                        self._cond.notify_all()  # the next in line may run too if a slot is left
                        break
                    if ahead == told or on_wait is None:
                        self._cond.wait(timeout=1.0)
                        continue
                told = ahead
                on_wait(ahead)
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                    self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

"""The server-wide bound on heavy computations (ddpm.compute_gate): at most N at once, the rest in line, told so."""
from __future__ import annotations

import threading

import pytest

from ddpm.compute_gate import ComputeGate


def _wait_until(predicate, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise TimeoutError("condition not reached")


def test_eight_visitors_on_two_slots_never_compute_more_than_two_at_once_and_the_waiting_are_told():
    gate, release = ComputeGate(2), threading.Event()
    lock, now, peak, told, finished = threading.Lock(), [0], [0], {}, []

    def visitor(i: int) -> None:
        with gate.slot(lambda ahead: told.setdefault(i, []).append(ahead)):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            release.wait(30)
            with lock:
                now[0] -= 1
        finished.append(i)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    _wait_until(lambda: gate.running == 2 and gate.waiting == 6)
    release.set()
    for t in threads:
        t.join(30)
    assert sorted(finished) == list(range(8)) and peak[0] == 2
    assert len(told) == 6  # every visitor who waited was told, with a count of what ran or waited before them
    assert all(counts[0] >= 2 and counts == sorted(counts, reverse=True) for counts in told.values())


def test_the_line_is_first_come_first_served():
    gate, order, hold = ComputeGate(1), [], threading.Event()
    first_in = threading.Event()

    def first() -> None:
        with gate.slot():
            first_in.set()
            hold.wait(30)

    def later(i: int) -> None:
        with gate.slot():
            order.append(i)

    t0 = threading.Thread(target=first)
    t0.start()
    first_in.wait(30)
    threads = []
    for i in range(4):  # each joins the line only after the previous one is in it
        threads.append(threading.Thread(target=later, args=(i,)))
        threads[-1].start()
        _wait_until(lambda: gate.waiting == i + 1)
    hold.set()
    for t in [t0, *threads]:
        t.join(30)
    assert order == [0, 1, 2, 3]


def test_a_visitor_who_leaves_the_line_gives_up_their_place_and_an_error_frees_the_slot():
    gate, hold, inside = ComputeGate(1), threading.Event(), threading.Event()

    def holder() -> None:
        with gate.slot():
            inside.set()
            hold.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(30)

    def leave(ahead: int) -> None:
        raise KeyboardInterrupt("the visitor navigated away")

    with pytest.raises(KeyboardInterrupt):
        with gate.slot(leave):
            pass
    assert gate.waiting == 0
    hold.set()
    t.join(30)
    with pytest.raises(RuntimeError):
        with gate.slot():
            raise RuntimeError("sampling failed")
    assert gate.running == 0
    with gate.slot():
        assert gate.running == 1


def test_a_gate_needs_a_slot():
    with pytest.raises(ValueError, match="at least 1 slot"):
        ComputeGate(0)

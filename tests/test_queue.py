"""The fair line for heavy requests (ddpm.serving.queue): order, one request per visitor, sharing, dropping, ETA."""
from __future__ import annotations

import threading

import pytest

from ddpm.serving.queue import CANCELLED, DONE, QUEUED, RUNNING, FairQueue, Position, RequestCancelled, WaitingBar


def test_requests_are_served_first_come_first_served_across_visitors():
    q = FairQueue()
    tickets = [q.submit(f"v{i}", f"key{i}", None, 1.0) for i in range(5)]
    assert [q.next(timeout=0).key for _ in range(5)] == [t.key for t in tickets]
    assert q.next(timeout=0) is None


def test_a_visitors_new_request_replaces_their_queued_one():
    q = FairQueue()
    first = q.submit("ann", "a", None, 1.0)
    q.submit("bob", "b", None, 1.0)
    second = q.submit("ann", "c", None, 1.0)
    assert first.status == CANCELLED and first.done.is_set()
    assert [q.next(timeout=0).key for _ in range(2)] == ["b", "c"]  # ann's new request goes to the back
    assert second.status == RUNNING and second.visitors == {"ann"}


def test_identical_requests_are_computed_once_and_keep_the_first_place():
    q = FairQueue()
    a = q.submit("ann", "same", None, 1.0)
    q.submit("bob", "other", None, 1.0)
    c = q.submit("cy", "same", None, 1.0)
    assert c is a and a.visitors == {"ann", "cy"}
    assert q.position(c).ahead == 0
    q.leave("ann", a)
    assert a.status == QUEUED  # cy still waits for it
    q.leave("cy", a)
    assert a.status == CANCELLED and q.queued == 1


def test_a_running_request_nobody_waits_for_is_flagged_for_its_worker():
    q = FairQueue()
    t = q.submit("ann", "k", None, 1.0)
    assert q.next(timeout=0) is t and t.status == RUNNING
    assert not q.should_cancel(t)
    q.submit("ann", "k2", None, 1.0)  # ann clicked again: the running one is no longer wanted
    assert q.should_cancel(t)
    q.finish(t, cancelled=True)
    assert t.status == CANCELLED and q.running == 0


def test_the_place_and_eta_come_from_the_measured_speed():
    q = FairQueue(workers=1)
    a = q.submit("ann", "a", None, 10.0)
    b = q.submit("bob", "b", None, 30.0)
    assert q.position(b).ahead == 1 and q.position(b).eta_s is None  # nothing measured yet
    assert q.next(timeout=0) is a
    a.started_at -= 2.0  # pretend it computed for 2 s: 5 units/s
    q.finish(a, result="x")
    assert a.status == DONE and q.speed == pytest.approx(5.0, rel=0.01)
    c = q.submit("cy", "c", None, 10.0)
    position = q.position(c)
    assert position.ahead == 1 and position.eta_s == pytest.approx((30 + 10) / 5.0, rel=0.01)


def test_finish_wakes_every_waiter_and_close_cancels_what_waits():
    q = FairQueue()
    t = q.submit("ann", "k", None, 1.0)
    queued = q.submit("bob", "k2", None, 1.0)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(t.done.wait(5)))
    waiter.start()
    q.finish(q.next(timeout=0), result=42)
    waiter.join(5)
    assert woke == [True] and t.result == 42
    q.close()
    assert queued.status == CANCELLED
    with pytest.raises(RequestCancelled):
        q.submit("cy", "k3", None, 1.0)


# ---- what a waiting visitor's bar says, and when it is redrawn (WaitingBar) ----------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_waiting_bar_says_the_place_and_a_coarse_eta():
    bar = WaitingBar("Sampling…", at_once=2)
    fraction, words = bar.words(Position(3, 12.4, False, 0.0))
    assert fraction == 0.0
    assert words.startswith("Waiting for your turn: 3 requests ahead of yours, about 10 s")
    assert "computes 2 at a time" in words
    assert "1 request ahead of yours" in bar.words(Position(1, None, False, 0.0))[1]
    assert "about" not in bar.words(Position(1, None, False, 0.0))[1]  # no ETA before any speed is measured
    assert bar.words(Position(0, 1.0, False, 0.0))[1].count("about 5 s") == 1  # never "about 0 s"
    assert bar.words(Position(0, 3.0, True, 0.6)) == (0.5, "Sampling… 50%, about 5 s")  # progress in quarters


def test_the_waiting_bar_redraws_on_a_new_place_a_start_and_each_quarter_only():
    clock = _Clock()
    bar = WaitingBar("Sampling…", at_once=2, heartbeat_s=5.0, clock=clock)
    shown = []

    def poll(position, dt=0.5):
        clock.now += dt
        drawn = bar.update(position)
        if drawn is not None:
            shown.append(drawn)

    poll(Position(3, 20.0, False, 0.0))
    for eta in (19.0, 18.0, 16.0, 14.0):  # the ETA moves, the place does not: nothing to redraw
        poll(Position(3, eta, False, 0.0))
    poll(Position(1, 10.0, False, 0.0))  # a new place
    poll(Position(0, 5.0, True, 0.0))  # it starts
    for progress in (0.1, 0.2, 0.3, 0.45, 0.55, 0.8, 0.9):
        poll(Position(0, 3.0, True, progress))
    assert [words.split(":")[1].split(",")[0] for _, words in shown[:2]] == [" 3 requests ahead of yours",
                                                                           " 1 request ahead of yours"]
    assert [fraction for fraction, _ in shown[2:]] == [0.0, 0.25, 0.5, 0.75]
    assert len(shown) == 6  # of 14 polls


def test_the_waiting_bar_redraws_the_same_words_after_the_heartbeat():
    """A call into Streamlit is where a visitor who left or clicked again is noticed: never silent for long."""
    clock = _Clock()
    bar = WaitingBar("Sampling…", at_once=1, heartbeat_s=5.0, clock=clock)
    position = Position(4, 40.0, False, 0.0)
    assert bar.update(position) is not None
    clock.now = 4.9
    assert bar.update(position) is None
    clock.now = 5.0
    assert bar.update(Position(4, 31.0, False, 0.0))[1].startswith("Waiting for your turn: 4 requests ahead of yours, about 30 s")
    assert bar.update(position) is None

"""The fair line for heavy requests (ddpm.serving.queue): order, one request per visitor, sharing, dropping, ETA."""
from __future__ import annotations

import threading

import pytest

from ddpm.serving.queue import CANCELLED, DONE, QUEUED, RUNNING, FairQueue, RequestCancelled


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

"""The server's shared result caches (ddpm.serving.result_cache): one computation per key, LRU eviction, no lock left
behind, and one cache per kind of result."""
from __future__ import annotations

import threading
import time

import pytest

from ddpm.serving import result_cache
from ddpm.serving.result_cache import ResultCache, ResultCaches


def _raise_boom():
    raise RuntimeError("boom")


def _wait_until(predicate, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def test_result_cache_computes_each_key_once_even_when_visitors_ask_together():
    cache, calls = ResultCache(), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return "trajectory"

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_or_compute(("k",), slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["trajectory"] * 4 and len(calls) == 1 and ("k",) in cache
    assert cache._key_locks == {}


def test_result_cache_evicts_the_least_recently_used_and_does_not_cache_errors():
    cache = ResultCache(max_entries=2)
    cache.get_or_compute("a", lambda: 1)
    cache.get_or_compute("b", lambda: 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.get_or_compute("c", lambda: 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    with pytest.raises(RuntimeError):
        cache.get_or_compute("d", _raise_boom)
    assert "d" not in cache and cache.get_or_compute("d", lambda: 4) == 4


def test_a_computation_that_raises_leaves_no_lock_behind_and_the_same_key_computes_normally_next():
    cache = ResultCache()
    for key in range(100):  # a failing key per visitor would otherwise grow the lock table for ever
        with pytest.raises(RuntimeError, match="boom"):
            cache.get_or_compute(("run", key), _raise_boom)
    assert cache._key_locks == {}
    assert cache.get_or_compute(("run", 0), lambda: "model") == "model" and cache.get(("run", 0)) == "model"
    assert cache._key_locks == {}


def test_a_visitor_waiting_on_a_computation_that_raises_computes_it_and_then_no_lock_is_left():
    cache, release, results = ResultCache(), threading.Event(), []

    def first():
        release.wait(30)
        raise RuntimeError("boom")

    def ask(compute):
        try:
            results.append(cache.get_or_compute("k", compute))
        except RuntimeError as err:
            results.append(str(err))

    a = threading.Thread(target=ask, args=(first,))
    a.start()
    _wait_until(lambda: "k" in cache._key_locks)
    b = threading.Thread(target=ask, args=(lambda: "second's",))
    b.start()
    _wait_until(lambda: cache._key_locks["k"][1] == 2)  # b now waits on the key's lock held by a
    release.set()
    a.join()
    b.join()
    assert results == ["boom", "second's"] and cache.get("k") == "second's" and cache._key_locks == {}


def test_each_kind_of_result_has_its_own_cache_so_a_loaded_model_is_not_pushed_out_by_figures():
    caches, model = ResultCaches(), object()
    caches.models.get_or_compute("job 1", lambda: model)
    for i in range(100):  # many visitors' figures, trajectories, samples and neighbours
        for cache in (caches.animations, caches.trajectories, caches.samples, caches.neighbours):
            cache.get_or_compute(("shipped:default", "dpmpp", 20, i), object)
    assert caches.models.get("job 1") is model
    sizes = {name: (getattr(caches, name).max_entries, len(getattr(caches, name)))
             for name in ("models", "trajectories", "animations", "samples", "neighbours")}
    assert sizes == {"models": (result_cache.MAX_MODELS, 1),
                     "trajectories": (result_cache.MAX_TRAJECTORIES, result_cache.MAX_TRAJECTORIES),
                     "animations": (result_cache.MAX_ANIMATIONS, result_cache.MAX_ANIMATIONS),
                     "samples": (result_cache.MAX_SAMPLES, result_cache.MAX_SAMPLES),
                     "neighbours": (result_cache.MAX_NEIGHBOURS, result_cache.MAX_NEIGHBOURS)}
    assert ResultCaches().models is not caches.models  # each server (st.cache_resource) builds its own

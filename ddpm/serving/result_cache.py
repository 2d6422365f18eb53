"""Thread-safe LRUs of finished computations shared by all visitors: one per kind of result, each with its own size."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

# How many of each kind the server keeps. A kind has its own slots, so a visitor's loaded model is never
# pushed out by other visitors' figures. Sizes: a trajectory holds (steps + 1) × n uint8 frames twice (x_t and x̂₀),
# 15 MB for a DDPM run of 16 patches at T = 200, and its animation figure holds the same frames; samples, edits
# (the Steer tissue page's) and nearest neighbours are a few kB.
MAX_MODELS = 4  # finished training runs, loaded
MAX_TRAJECTORIES = 8
MAX_ANIMATIONS = 8
MAX_SAMPLES = 32
MAX_NEIGHBOURS = 16
MAX_EDITS = 32


class ResultCache:
    """``get_or_compute(key, fn)`` runs ``fn`` in the caller's thread at most once per key at a time; a
    second caller with the same key waits for the first and gets its result.  Errors are not cached.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._key_locks: dict[Hashable, tuple[threading.Lock, int]] = {}  # key -> (its lock, callers holding or awaiting it)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            key_lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (key_lock, users + 1)
        try:
            with key_lock:
                with self._lock:
                    if key in self._data:
                        return self._data[key]
                value = compute()
                with self._lock:
                    self._data[key] = value
                    while len(self._data) > self.max_entries:
                        self._data.popitem(last=False)
                return value
        finally:  # the last caller of a key removes its lock, whether the computation returned or raised
            with self._lock:
                key_lock, users = self._key_locks[key]
                if users == 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (key_lock, users - 1)

    def put(self, key: Hashable, value: Any) -> None:
        """Store a result computed elsewhere (e.g. by a sampling worker)."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass(frozen=True)
class ResultCaches:
    """The server's finished results by kind, keyed by what determines them (no kind prefix in the keys)."""

    models: ResultCache = field(default_factory=lambda: ResultCache(MAX_MODELS))  # job id -> Checkpoint
    trajectories: ResultCache = field(default_factory=lambda: ResultCache(MAX_TRAJECTORIES))
    animations: ResultCache = field(default_factory=lambda: ResultCache(MAX_ANIMATIONS))
    samples: ResultCache = field(default_factory=lambda: ResultCache(MAX_SAMPLES))
    neighbours: ResultCache = field(default_factory=lambda: ResultCache(MAX_NEIGHBOURS))
    edits: ResultCache = field(default_factory=lambda: ResultCache(MAX_EDITS))

"""Generated patches made ahead of time for the "Real or generated?" quiz, so the next round appears at once.

The pool keeps about ``ready_per_tissue`` generated patches of each tissue. A background thread refills it through
the same fair line as every other heavy request (``sampling_service``, as one more visitor: one request of at most
``batch`` patches in flight, the neediest tissues first) whenever a tissue has fewer than half that many.

A visitor never gets the same generated patch twice: ``draw`` skips the ids in the visitor's ``seen`` set and adds
the one it returns. Patches are shared across visitors: one patch is shown to up to ``max_uses`` visitors, then
retired (a fresh one replaces it), so a crowd neither waits for the network nor drains the pool, and one visitor
playing fast costs the server nothing more. A visitor who has seen every patch in the pool retires one of those
they saw, which makes room for a fresh one.
"""
from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from ..sampling_spec import SamplingSpec
from .cost import check_request_cost, deadline_s
from .sampling_worker import ModelPayload, SampleRequest
from .server_limits import ServerLimits

POOL_VISITOR = "quiz-pool"  # the pool's place in the sampling service's fair line
READY_PER_TISSUE = 8
BATCH = 9  # patches per refill request: about 5 s on one thread for the default model (ddpm.serving.cost)
MAX_USES = 20  # visitors one generated patch is shown to before it is retired
RETRY_S, MAX_RETRY_S = 5.0, 120.0  # after a failed refill: wait, doubling up to the maximum

Generate = Callable[[tuple[int, ...]], np.ndarray]  # tissue classes, one per patch -> uint8 (n, H, W, 3)


@dataclass(eq=False)
class PoolPatch:
    """One generated patch: ``id`` unique in its pool, ``tissue`` the class it was asked to be."""

    id: int
    tissue: int
    image: np.ndarray  # (H, W, 3) uint8, read-only
    uses: int = 0  # visitors it was shown to


class QuizPool:
    """See the module docstring. ``generate(classes)`` makes the patches (``service_generator``: through the sampling
    service); the refill thread starts at once and runs until ``close``."""

    def __init__(self, generate: Generate, num_classes: int, ready_per_tissue: int = READY_PER_TISSUE,
                 batch: int = BATCH, max_uses: int = MAX_USES, retry_s: float = RETRY_S, rng: random.Random | None = None):
        if num_classes < 1 or ready_per_tissue < 2 or batch < 1 or max_uses < 1:
            raise ValueError("a quiz pool needs num_classes ≥ 1, ready_per_tissue ≥ 2, batch ≥ 1 and max_uses ≥ 1")
        self._generate = generate
        self.ready_per_tissue, self.batch, self.max_uses, self.retry_s = ready_per_tissue, batch, max_uses, retry_s
        self._rng = rng or random.SystemRandom()
        self._ready: dict[int, list[PoolPatch]] = {c: [] for c in range(num_classes)}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._filling = False  # between a tissue falling below half its share and every tissue full again
        self.last_error: str | None = None  # why the last refill failed (None after a success)
        self.made = 0  # patches generated so far
        self._thread = threading.Thread(target=self._refill_loop, daemon=True, name="ddpm-quiz-pool")
        self._thread.start()

    # ---- the visitor's side ---------------------------------------------------------------------------------------
    def draw(self, seen: set[int], timeout_s: float = 0.0) -> PoolPatch | None:
        """A generated patch whose id is not in ``seen`` (then added to it), of a tissue drawn at random among those
        that have one; waits up to ``timeout_s`` for the refill, else None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            retired = False
            while not self._closed.is_set():
                unseen = {c: [p for p in patches if p.id not in seen] for c, patches in self._ready.items()}
                tissues = [c for c, patches in unseen.items() if patches]
                if tissues:
                    patch = self._rng.choice(unseen[self._rng.choice(tissues)])
                    patch.uses += 1
                    seen.add(patch.id)
                    if patch.uses >= self.max_uses:
                        self._retire(patch)
                    return patch
                if not retired:  # this visitor saw every patch there is: make room for a fresh one
                    self._retire_one_of(seen)
                    retired = True
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return None

    def ready(self) -> dict[int, int]:
        """Patches ready per tissue."""
        with self._cond:
            return {c: len(patches) for c, patches in self._ready.items()}

    def close(self) -> None:
        """Stop refilling (a request in flight finishes or fails first); waiting draws return None."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()

    # ---- the refill -----------------------------------------------------------------------------------------------
    def _retire(self, patch: PoolPatch) -> None:
        self._ready[patch.tissue].remove(patch)
        self._cond.notify_all()  # the refill thread may have work now

    def _retire_one_of(self, seen: set[int]) -> None:
        mine = [p for patches in self._ready.values() for p in patches if p.id in seen]
        if mine:
            self._retire(max(mine, key=lambda p: p.uses))

    def _plan(self) -> tuple[int, ...]:
        """The tissues of the next request (lock held). Once a tissue is below half of ``ready_per_tissue``, requests
        of up to ``batch`` patches, each to the tissue furthest below ``ready_per_tissue``, until every tissue has it."""
        counts = {c: len(patches) for c, patches in self._ready.items()}
        self._filling = self._filling or any(n < self.ready_per_tissue / 2 for n in counts.values())
        classes: list[int] = []
        while self._filling and len(classes) < self.batch:
            c = min(counts, key=lambda k: (counts[k], k))
            if counts[c] >= self.ready_per_tissue:
                break
            classes.append(c)
            counts[c] += 1
        self._filling = bool(classes)
        return tuple(sorted(classes))

    def _refill_loop(self) -> None:
        wait_s = self.retry_s
        while not self._closed.is_set():
            with self._cond:
                classes = self._plan()
                if not classes:
                    self._cond.wait(1.0)
                    continue
            try:
                images = np.asarray(self._generate(classes))
                if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(classes) or images.shape[-1] != 3:
                    raise ValueError(f"expected uint8 ({len(classes)}, H, W, 3) patches, got {images.dtype} {images.shape}")
            except Exception as err:  # noqa: BLE001 - the pool must outlive any failure; the page shows the reason
                with self._cond:
                    self.last_error = str(err) or type(err).__name__
                    self._cond.notify_all()
                self._closed.wait(wait_s)
                wait_s = min(2 * wait_s, MAX_RETRY_S)
                continue
            with self._cond:
                for tissue, image in zip(classes, images):
                    image = image.copy()
                    image.flags.writeable = False
                    self._ready[tissue].append(PoolPatch(next(self._ids), tissue, image))
                self.made += len(classes)
                self.last_error, wait_s = None, self.retry_s
                self._cond.notify_all()


def pool_spec(checkpoint: Any) -> SamplingSpec:
    """How the pool samples: the checkpoint's recommended settings (``checkpoint.sampling``), fitted to its T."""
    return checkpoint.sampling.fitted(checkpoint.schedule.num_timesteps)


def service_generator(service: Any, payload: ModelPayload, checkpoint: Any, limits: ServerLimits,
                      visitor: Hashable = POOL_VISITOR, rng: random.Random | None = None) -> Generate:
    """``generate`` for a QuizPool: sample the tissues asked for with the checkpoint's recommended settings
    (``checkpoint.sampling``) as one request to ``service`` (a ``SamplingService``), priced and given its deadline as
    every page's request is; each request has a fresh random seed. A request above the server's budget raises
    ``RequestTooCostlyError``."""
    rng = rng or random.SystemRandom()
    spec = pool_spec(checkpoint)

    def generate(classes: tuple[int, ...]) -> np.ndarray:
        cost = check_request_cost(checkpoint.model_config, spec, len(classes), checkpoint.schedule.num_timesteps,
                                  limits, conditional=True)
        request = SampleRequest("samples", payload.key, spec, rng.randrange(2**31), len(classes), tuple(classes))
        return service.run(visitor, payload, request, cost.flops, None, deadline_s(cost, limits), cost.expected_s)

    return generate

"""The quiz's rounds: the answer key kept on the server, one answer per round, answers rate-limited per visitor.

A round is two patches of one tissue side by side, one real and one generated, the generated one's side drawn at
random (``random.SystemRandom``). ``Quiz.new_round`` hands the page only what it may show (``RoundView``: a token,
the tissue and the two images in place); the side stays in the ``Quiz`` until ``answer`` consumes the token, once,
for the visitor who drew it, and the answer goes into the database (``ddpm.quiz``).

Bounds, for anonymous visitors on a shared server: a visitor answers at most once every ``ANSWER_EVERY_S`` and
``ANSWERS_PER_HOUR`` times an hour, and the whole server stores at most ``SERVER_ANSWERS_PER_HOUR`` an hour (a
visitor is a browser session, so a script opening sessions could otherwise fill the disk) (``RateLimiter``); a
visitor has one open round at a time (a new one replaces it), a round not answered within ``ROUND_TTL_S`` is
forgotten, and at most ``MAX_OPEN_ROUNDS`` are kept.
"""
from __future__ import annotations

import random
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from ..data import ImageSet, to_hwc_numpy
from ..quiz import SIDES, Answer, AlreadyAnswered, QuizDB, ScoreTable
from .quiz_pool import QuizPool

ANSWER_EVERY_S = 1.5  # the least time between two answers of one visitor
ANSWERS_PER_HOUR = 300
SERVER_ANSWERS_PER_HOUR = 20_000  # about 2 MB of database an hour
ROUND_TTL_S = 3600.0
MAX_OPEN_ROUNDS = 10_000
MAX_VISITORS_TRACKED = 10_000  # the rate limiter forgets the visitors it heard from longest ago
_SERVER = object()  # the server limiter's one key


class RateLimited(ValueError):
    """The visitor answers too fast or too often; the message says how long to wait."""


class RoundClosed(ValueError):
    """The round was answered already, has expired, or is another visitor's."""


class RateLimiter:
    """At most one event per ``min_interval_s`` and ``per_hour`` events an hour for each key (thread-safe)."""

    def __init__(self, min_interval_s: float = ANSWER_EVERY_S, per_hour: int = ANSWERS_PER_HOUR,
                 max_keys: int = MAX_VISITORS_TRACKED, clock: Callable[[], float] = time.monotonic):
        self.min_interval_s, self.per_hour, self.max_keys, self.clock = min_interval_s, per_hour, max_keys, clock
        self._events: OrderedDict[Hashable, deque] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: Hashable) -> None:
        """RateLimited if an event for ``key`` now would break a limit; nothing is counted."""
        with self._lock:
            self._check(key, self.clock())

    def note(self, key: Hashable) -> None:
        """Count an event for ``key`` now."""
        with self._lock:
            events = self._events.setdefault(key, deque())
            events.append(self.clock())
            self._events.move_to_end(key)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)

    def _check(self, key: Hashable, now: float) -> None:
        events = self._events.get(key)
        if not events:
            return
        while events and now - events[0] >= 3600:
            events.popleft()
        if events and now - events[-1] < self.min_interval_s:
            raise RateLimited(f"one answer every {self.min_interval_s:g} s: look again and answer in "
                              f"{self.min_interval_s - (now - events[-1]):.1f} s")
        if len(events) >= self.per_hour:
            raise RateLimited(f"at most {self.per_hour} answers an hour: come back in "
                              f"{(3600 - (now - events[0])) / 60:.0f} min")


@dataclass(frozen=True)
class RoundView:
    """What the page shows of a round: nothing in it says which side is generated."""

    token: str  # answers this round, once
    tissue: int
    left: np.ndarray  # (H, W, 3) uint8
    right: np.ndarray


@dataclass(frozen=True)
class Outcome:
    """An answered round, as the visitor learns it."""

    tissue: int
    generated_side: str
    answer: str
    seconds: float

    @property
    def correct(self) -> bool:
        return self.answer == self.generated_side


@dataclass(frozen=True)
class _OpenRound:
    visitor: Hashable
    tissue: int
    generated_side: str
    weights_sha256: str
    sampling: str
    real_source: str
    shown_at: float  # monotonic


class Quiz:
    """The server's quiz: open rounds with their answer keys, the answer rate limits, the answers database."""

    def __init__(self, db: QuizDB, limiter: RateLimiter | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, hub: Any = None, hub_note: str | None = None,
                 server_per_hour: int = SERVER_ANSWERS_PER_HOUR):
        self.db, self.limiter = db, limiter or RateLimiter(clock=clock)
        self.server_limiter = RateLimiter(0.0, server_per_hour, clock=clock)  # every visitor's answers together
        self.hub, self.hub_note = hub, hub_note  # the Hub copy's CommitScheduler (or None), and a sentence about it
        self._rng, self._clock = rng or random.SystemRandom(), clock
        self._open: OrderedDict[str, _OpenRound] = OrderedDict()  # token -> round, oldest first
        self._of_visitor: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    def new_round(self, visitor: Hashable, tissue: int, generated: np.ndarray, real: np.ndarray, weights_sha256: str,
                  sampling: str, real_source: str) -> RoundView:
        """Open a round for ``visitor`` (replacing their open one): the generated patch goes left or right at random."""
        if generated.shape != real.shape or generated.dtype != np.uint8 or real.dtype != np.uint8:
            raise ValueError(f"both patches must be uint8 of one shape, got {generated.dtype} {generated.shape} and "
                             f"{real.dtype} {real.shape}")
        side = self._rng.choice(SIDES)
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._forget_expired()
            previous = self._of_visitor.pop(visitor, None)
            if previous is not None:
                self._open.pop(previous, None)
            self._open[token] = _OpenRound(visitor, tissue, side, weights_sha256, sampling, real_source, self._clock())
            self._of_visitor[visitor] = token
            while len(self._open) > MAX_OPEN_ROUNDS:
                _, dropped = self._open.popitem(last=False)
                self._of_visitor.pop(dropped.visitor, None)
        left, right = (generated, real) if side == "left" else (real, generated)
        return RoundView(token, tissue, left, right)

    def answer(self, visitor: Hashable, token: str, answer: str) -> Outcome:
        """Close the round ``token`` with the visitor's ``answer`` (the side they say is generated) and store it.
        RoundClosed if it is not this visitor's open round; RateLimited (the round stays open) if they answer too
        fast or too often."""
        if answer not in SIDES:
            raise ValueError(f"answer must be one of {SIDES}, got {answer!r}")
        with self._lock:
            self._forget_expired()
            round_ = self._open.get(token)
            if round_ is None or round_.visitor != visitor:
                raise RoundClosed("this round is over (answered, or left open too long); press Next round")
            self.limiter.check(visitor)
            try:
                self.server_limiter.check(_SERVER)
            except RateLimited as err:
                raise RateLimited(f"this server is taking no more answers for now ({err})") from None
            self.limiter.note(visitor)
            self.server_limiter.note(_SERVER)
            del self._open[token]
            self._of_visitor.pop(visitor, None)
        seconds = round(self._clock() - round_.shown_at, 2)
        try:
            self.db.record(Answer(token, round_.tissue, round_.weights_sha256, round_.sampling, round_.real_source,
                                  round_.generated_side, answer, seconds, time.time()))
        except AlreadyAnswered as err:
            raise RoundClosed(str(err)) from None
        return Outcome(round_.tissue, round_.generated_side, answer, seconds)

    @property
    def open_rounds(self) -> int:
        with self._lock:
            return len(self._open)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._open:
            token, oldest = next(iter(self._open.items()))
            if now - oldest.shown_at < ROUND_TTL_S:
                return
            del self._open[token]
            if self._of_visitor.get(oldest.visitor) == token:
                del self._of_visitor[oldest.visitor]


@dataclass
class QuizSession:
    """One visitor's quiz: the patches they were shown (never shown again), the round on screen, their answers."""

    seen_generated: set[int] = field(default_factory=set)
    seen_real: set[int] = field(default_factory=set)
    view: RoundView | None = None
    outcome: Outcome | None = None  # the answer to ``view``, once given
    history: list[Outcome] = field(default_factory=list)
    notice: str | None = None  # why the last click did nothing (too fast, round over)

    def score(self) -> ScoreTable:
        return ScoreTable.from_outcomes((o.tissue, o.correct) for o in self.history)

    def answer(self, quiz: Quiz, visitor: Hashable, side: str) -> Outcome | None:
        """Answer the round on screen; a refusal (too fast, round over) becomes ``notice`` instead, and a round that
        is over is dropped so that the next one is dealt."""
        if self.view is None or self.outcome is not None:
            return None
        try:
            self.outcome = quiz.answer(visitor, self.view.token, side)
        except RateLimited as err:
            self.notice = f"Not counted: {err}."
            return None
        except RoundClosed as err:
            self.view, self.notice = None, f"Not counted: {err}."
            return None
        self.history.append(self.outcome)
        self.notice = None
        return self.outcome

    def next_round(self) -> None:
        """Leave the answered round: the page deals the next one."""
        self.view = self.outcome = None


def real_index(labels: np.ndarray, tissue: int, seen: set[int], rng: random.Random) -> int:
    """A random patch of ``tissue`` not in ``seen`` (then added to it); once all were seen, any patch of it."""
    of_tissue = np.flatnonzero(labels == tissue)
    if of_tissue.size == 0:
        raise ValueError(f"the real patches hold no patch of tissue {tissue}")
    unseen = [int(i) for i in of_tissue if int(i) not in seen]
    index = rng.choice(unseen) if unseen else int(rng.choice(of_tissue.tolist()))
    seen.add(index)
    return index


def deal_round(quiz: Quiz, pool: QuizPool, real: ImageSet, real_source: str, session: QuizSession, visitor: Hashable,
               weights_sha256: str, sampling: str, timeout_s: float = 0.0,
               rng: random.Random | None = None) -> RoundView | None:
    """Open the visitor's next round: a pool patch they have not seen (waiting up to ``timeout_s`` for one) beside
    an unseen real patch of the same tissue. None if the pool has none for them yet."""
    patch = pool.draw(session.seen_generated, timeout_s)
    if patch is None:
        return None
    index = real_index(real.labels.numpy(), patch.tissue, session.seen_real, rng or random.SystemRandom())
    real_hwc = to_hwc_numpy(real.images[index:index + 1])[0]
    session.view = quiz.new_round(visitor, patch.tissue, patch.image, real_hwc, weights_sha256, sampling, real_source)
    session.outcome = None
    return session.view

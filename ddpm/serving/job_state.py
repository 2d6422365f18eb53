"""A training job's state: who owns it, the mutable record its worker thread updates, and the snapshots a page reads."""
from __future__ import annotations

import multiprocessing as mp
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoints import WEIGHTS_NAME
from .processes import context
from .train_request import TrainRequest

ACTIVE = ("starting", "running", "stopping")


@dataclass(frozen=True)
class Visitor:
    """Who asks the registry: ``id`` (128 random bits) decides which runs are theirs; ``name`` is the short
    label others see while this visitor trains, and two visitors may share it."""

    id: str

    @classmethod
    def new(cls) -> "Visitor":
        return cls(secrets.token_hex(16))

    @property
    def name(self) -> str:
        return f"visitor {self.id[:4]}"


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for the page to draw."""

    id: str
    owner: str  # the owner's display name (Visitor.name); who owns the run stays in the registry
    request: TrainRequest
    status: str  # starting | running | stopping | finished | stopped | failed
    message: str
    step: int
    max_steps: int
    loss_steps: tuple[int, ...]
    losses: tuple[float, ...]
    images_per_sec: float
    eta_s: float | None
    started_at: float
    finished_at: float | None
    samples: np.ndarray | None  # (num_samples, H, W, 3) uint8 from the run's current sampling weights
    samples_step: int | None
    out_dir: Path
    device: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def has_checkpoint(self) -> bool:
        return (self.out_dir / WEIGHTS_NAME).is_file()

    @property
    def ends_at(self) -> float | None:
        """Expected end (Unix time) while running, the real end once done, None before the first step."""
        if self.finished_at is not None:
            return self.finished_at
        return time.time() + self.eta_s if self.eta_s is not None else None


@dataclass
class Job:
    """The live record of one run; every field is read and written under ``lock``."""

    id: str
    owner: Visitor
    request: TrainRequest
    out_dir: Path
    started_at: float
    stop_event: mp.synchronize.Event = field(default_factory=lambda: context().Event())  # shared with its process
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str = "starting"
    message: str = "preparing the data and the network"
    step: int = 0
    max_steps: int = 0
    loss_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    images_per_sec: float = 0.0
    eta_s: float | None = None
    finished_at: float | None = None
    samples: np.ndarray | None = None
    samples_step: int | None = None
    last_heartbeat: float = 0.0
    stop_reason: str | None = None
    device: str = "?"
    thread: threading.Thread | None = None  # the worker thread, in the server's process
    process: mp.process.BaseProcess | None = None  # the training process it started

    def snapshot(self) -> JobSnapshot:
        with self.lock:
            return JobSnapshot(self.id, self.owner.name, self.request, self.status, self.message, self.step, self.max_steps,
                               tuple(self.loss_steps), tuple(self.losses), self.images_per_sec, self.eta_s,
                               self.started_at, self.finished_at, self.samples, self.samples_step, self.out_dir,
                               self.device)

    def request_stop(self, reason: str) -> None:
        """Ask the training process to stop after its current step; it saves what it has and ends as "stopped"."""
        with self.lock:
            if self.status in ACTIVE and not self.stop_event.is_set():
                self.stop_reason = reason
                self.status = "stopping"
                self.stop_event.set()

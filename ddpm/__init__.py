"""A small, exact diffusion library for PathMNIST: schedules, U-Nets, samplers, trainer, checkpoints.

The names below are imported on first use (PEP 562), so ``import ddpm`` and ``python -m ddpm --help``
do not load torch until something needs it.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "checkpoints": ("Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"),
    "data": ("CLASS_NAMES", "DataNotFoundError", "load_images", "load_pathmnist", "load_subset"),
    "pipeline": ("generate", "trajectory"),
    "presets": ("PRESETS", "get_preset"),
    "samplers": ("SAMPLERS", "NonFiniteSampleError", "Sampler", "sample", "sample_progressive"),
    "sampling_spec": ("SamplingSpec",),
    "schedules": ("NoiseSchedule", "ScheduleConfig"),
    "training": ("NonFiniteLossError", "TrainConfig", "Trainer"),
    "unet": ("UNetConfig", "build_unet"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

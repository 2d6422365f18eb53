"""A small, exact diffusion library for PathMNIST: schedules, U-Nets, samplers, trainer, checkpoints."""
from .checkpoints import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import CLASS_NAMES, DataNotFoundError, load_images, load_pathmnist, load_subset
from .pipeline import generate, trajectory
from .presets import PRESETS, get_preset
from .samplers import SAMPLERS, sample, sample_progressive
from .schedules import NoiseSchedule, ScheduleConfig
from .training import NonFiniteLossError, TrainConfig, Trainer
from .unet import UNetConfig, build_unet

__all__ = [
    "CLASS_NAMES", "Checkpoint", "CheckpointError", "DataNotFoundError", "NoiseSchedule", "NonFiniteLossError",
    "PRESETS", "SAMPLERS", "ScheduleConfig", "TrainConfig", "Trainer", "UNetConfig", "build_unet", "generate",
    "get_preset", "load_checkpoint", "load_images", "load_pathmnist", "load_subset", "sample", "sample_progressive",
    "save_checkpoint", "trajectory",
]

"""Checkpoints in the Hugging Face layout: ``model.safetensors`` + ``config.json``.

A checkpoint folder may also hold ``training_state.safetensors`` / ``training_state.json`` (raw
weights, optimizer moments and counters for resuming), ``training_log.csv``, ``evaluation.json`` and
``samples.png``.  Every write goes to a temporary file that is renamed into place; nothing is ever
unpickled.  Sources are a local folder or a Hub repo id (through huggingface_hub), with a fallback to
the folder shipped in ``checkpoints/`` when the Hub cannot be reached.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .limits import MAX_CLASSES, check_checkpoint_config
from .sampling_spec import SamplingSpec
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import UNetConfig, build_unet, state_dict_mismatch

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
STATE_NAME = "training_state.safetensors"
STATE_CONFIG_NAME = "training_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"  # Adam moments: large, not shipped; resume works without them
LOG_NAME = "training_log.csv"
#: what `push` publishes: the files of a checkpoint folder itself (top level, by name), never anything else in it; the
#: resumable state stays local (the model card is README.md; evaluation.json/.png are written by `ddpm evaluate`)
PUBLISHED_NAMES = (CONFIG_NAME, WEIGHTS_NAME, LOG_NAME, "README.md", "evaluation.json", "evaluation.png")
REQUIRED_KEYS = ("format_version", "model", "schedule")
OPTIONAL_KEYS = ("library", "preset", "training", "weights_dtype", "description", "data", "init_from", "class_names",
                 "sampling")
TEXT_KEYS = ("library", "preset", "weights_dtype", "description", "data", "init_from")  # free text, shown as written
MAX_TEXT = 2000  # characters of one text entry: a data source or a lineage note, not a file's worth
#: facts in the "training" section that are read as counts (shown with thousands separators, used as sizes)
TRAINING_COUNTS = ("steps", "max_steps", "batch_size", "warmup_steps", "seed", "images_seen", "world_size",
                   "effective_batch", "num_train_images", "parameters")
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIR = REPO_ROOT / "checkpoints"
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class HubModel:
    """A model on the Hub at a pinned revision: a commit hash, or the tag made when it was pushed.

    A push to the repo's main branch does not change what a deployment serves; changing the pin here does.
    """

    repo_id: str
    revision: str

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


#: Where the shipped models live on the Hub, each at the revision that holds the weights in checkpoints/<name>
#: (tagged by its training step, and "gpu-" where a GPU trained it, when pushed); offline, or when that revision
#: cannot be had, checkpoints/<name>.
HUB_REPOS = {"default": HubModel("pathmnist-studio/ddpm-pathmnist", "gpu-step-8400"),
             "seed": HubModel("pathmnist-studio/ddpm-pathmnist-seed", "step-1406")}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match its config; the message says which file and what to do."""


@dataclass
class Checkpoint:
    model: nn.Module
    model_config: UNetConfig
    schedule_config: ScheduleConfig
    config: dict[str, Any]
    source: str  # where it was loaded from, in words
    path: Path | None = None  # local folder the files were read from
    warnings: list[str] = field(default_factory=list)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(self.schedule_config)

    @property
    def sampling(self) -> SamplingSpec:
        """How this model is meant to be sampled: its config's "sampling" section over the defaults."""
        return SamplingSpec.recommended(self.config)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def make_config(model_config: UNetConfig, schedule_config: ScheduleConfig, **extra: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "library": "ddpm", "model": model_config.to_dict(),
            "schedule": schedule_config.to_dict(), **extra}


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, config: dict[str, Any],
                    weights_dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model.safetensors`` (in ``weights_dtype``) and ``config.json`` into ``folder`` atomically."""
    folder = Path(folder)
    state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_save_tensors(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(folder / CONFIG_NAME, {**config, "weights_dtype": str(weights_dtype).removeprefix("torch.")})
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, validated: every required key present, no unknown key."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint folder needs {CONFIG_NAME} beside {WEIGHTS_NAME}. "
                              "Re-download the checkpoint or save it again with ddpm.")
    try:
        config = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, an integer of 5,000 digits, nesting too deep
        reason = "nested too deeply" if isinstance(err, RecursionError) else f"{err}"[:200]
        raise CheckpointError(f"{path} is not valid JSON ({reason}); the file is corrupt: re-download or re-save it.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(config).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    unknown = [k[:40] for k in sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))[:5]]  # named, not echoed
    if missing or unknown:
        raise CheckpointError(f"{path}: missing keys {missing}, unknown keys {unknown}; expected {list(REQUIRED_KEYS)} "
                              f"and optionally {list(OPTIONAL_KEYS)}. Was it written by another tool or a newer ddpm?")
    if config["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config['format_version']!r:.40} is not supported (this ddpm "
                              f"reads {FORMAT_VERSION}); upgrade ddpm or re-save the checkpoint.")
    problems = optional_section_problems(config)
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems[:3])}{'; …' if len(problems) > 3 else ''}. Was it written "
                              "by another tool, or edited by hand?")
    return config


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= MAX_TEXT)


def optional_section_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with the optional sections the app and the model card show (the "sampling" section is checked
    with the model's): text that is not text or is too long, a "training" section that is not an object of plain
    values, class names that are not a list of names. Every value is described, never echoed."""
    problems = [f'"{k}" must be text of at most {MAX_TEXT} characters, got {type(config[k]).__name__}'
                + (f" of {len(config[k]):,} characters" if isinstance(config[k], str) else "")
                for k in TEXT_KEYS if k in config and not (isinstance(config[k], str) and len(config[k]) <= MAX_TEXT)]
    training = config.get("training", {})
    if not isinstance(training, dict):
        problems.append(f'"training" must be an object, got {type(training).__name__}')
    else:
        problems += [f'"training.{k:.40}" must be a number, text of at most {MAX_TEXT} characters, true/false or null, '
                     f"got {type(v).__name__}" for k, v in training.items() if not _is_scalar(v)]
        problems += [f'"training.{k}" must be a whole number ≥ 0, got {v!r:.40}' for k, v in training.items()
                     if k in TRAINING_COUNTS and not _is_count(v)]
    names = config.get("class_names", [])
    if not (isinstance(names, list) and len(names) <= MAX_CLASSES
            and all(isinstance(n, str) and 0 < len(n) <= 100 for n in names)):
        problems.append(f'"class_names" must be a list of at most {MAX_CLASSES} names of 1 to 100 characters')
    return problems


def configs_from(config: dict[str, Any], path: Path) -> tuple[UNetConfig, ScheduleConfig]:
    """The configs of a checkpoint, refused (before any network is built) when ``limits`` does not allow them or
    its recommended sampling is not a valid ``SamplingSpec``."""
    try:
        check_checkpoint_config(config)
        configs = UNetConfig.from_dict(config["model"]), ScheduleConfig.from_dict(config["schedule"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_NAME}: invalid model or schedule section: {err}") from err
    try:
        SamplingSpec.recommended(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_NAME}: invalid sampling section: {err}") from err
    return configs


def load_state_dict_checked(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` (cast to its dtype), with errors that name the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; re-download the checkpoint or train one with `python -m ddpm train`.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it is corrupt or truncated: "
                              "re-download it or save the checkpoint again.") from err
    expected = model.state_dict()
    missing, unexpected, shapes = state_dict_mismatch(expected, state)
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}" for k in shapes]
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [
            f"missing tensors {missing[:4]}{'…' if len(missing) > 4 else ''}" if missing else "",
            f"unexpected tensors {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}" if unexpected else "",
            f"wrong shapes {wrong[:3]}{'…' if len(wrong) > 3 else ''}" if wrong else ""]))
        raise CheckpointError(f"{path} does not match the network in {path.parent / CONFIG_NAME} ({details}). "
                              "The weights and config come from different models: use the config.json saved with these weights.")
    broken = [(k, int((~torch.isfinite(v)).sum())) for k, v in state.items()
              if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # NaN weights sample black images without a word: refuse them here, where the file is known
        k, count = broken[0]
        more = f" (and {len(broken) - 1} more tensor(s))" if len(broken) > 1 else ""
        raise CheckpointError(f"{path}: tensor {k!r} holds {count} NaN or infinite value(s){more}; these weights cannot "
                              "sample. The run that wrote them diverged or the file is damaged: use an earlier "
                              "checkpoint or retrain.")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def load_local(folder: str | os.PathLike, source: str | None = None) -> Checkpoint:
    """A checkpoint from a local folder; weights are restored to float32 whatever their storage dtype."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; a checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}.")
    config = read_config(folder)
    model_config, schedule_config = configs_from(config, folder)
    model = build_unet(model_config)
    load_state_dict_checked(model, folder / WEIGHTS_NAME)
    model.eval()
    return Checkpoint(model, model_config, schedule_config, config, source or f"local folder {folder}", folder)


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Can a TCP connection to the Hub endpoint (``HF_ENDPOINT``) be opened within ``timeout`` seconds?

    huggingface_hub retries a first download for about 25 s before giving up offline; this probe lets
    an offline app fall back to ``checkpoints/`` at once.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def download_from_hub(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                      local_files_only: bool = False) -> Path:
    """Fetch config.json and model.safetensors of a Hub model repo; returns the local snapshot folder."""
    from huggingface_hub import hf_hub_download

    fetch = lambda name: Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,  # noqa: E731
                                              local_files_only=local_files_only))
    folder = fetch(CONFIG_NAME).parent
    configs_from(read_config(folder), folder)  # a config out of bounds is refused before its weights are fetched
    return fetch(WEIGHTS_NAME).parent


def load_checkpoint(source: str | os.PathLike | None = None, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint from a local folder, a shipped model name or a Hub repo id (``owner/name[@revision]``).

    ``None`` or a shipped name ("default", "seed") tries its Hub repo at the revision pinned in HUB_REPOS
    first and falls back to ``checkpoints/<name>`` offline; a repo id that cannot be reached is an error
    unless a shipped model is published under it (then its pin applies too).  ``Checkpoint.source`` says
    which was used, revision included.
    """
    source = str(source) if source is not None else DEFAULT_MODEL
    if Path(source).expanduser().is_dir():
        return load_local(Path(source).expanduser())
    if "@" in source:
        source, revision = source.rsplit("@", 1)
    shipped = source if source in HUB_REPOS else next((k for k, v in HUB_REPOS.items() if v.repo_id == source), None)
    repo_id = HUB_REPOS[shipped].repo_id if shipped else source
    if revision is None and shipped:
        revision = HUB_REPOS[shipped].revision
    if not looks_like_repo_id(repo_id):
        raise CheckpointError(f"{source!r} is neither a checkpoint folder, a shipped model {sorted(HUB_REPOS)}, "
                              "nor a Hub repo id like 'owner/name' or 'owner/name@revision'.")
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from huggingface_hub import constants

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        online = not constants.HF_HUB_OFFLINE and hub_reachable()
        folder = download_from_hub(repo_id, revision, cache_dir, local_files_only=not online)
        where = "Hugging Face Hub" if online else "Hugging Face Hub cache (offline)"
        return load_local(folder, source=f"{where} {at}")
    except CheckpointError:
        raise
    except LocalEntryNotFoundError as err:  # an EntryNotFoundError too, but it means "offline and not cached"
        hub_error = f"the Hub could not be reached for {at} ({type(err).__name__})"
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        hub_error = f"the Hub has no checkpoint at {at} ({type(err).__name__})"
    except Exception as err:  # offline, DNS, timeout, proxy: anything that keeps us from the Hub
        hub_error = f"the Hub could not be reached for {at} ({type(err).__name__})"
    if shipped is None:
        raise CheckpointError(f"{hub_error}; pass a local checkpoint folder or check the repo id and your connection.")
    local = SHIPPED_DIR / shipped
    if not (local / WEIGHTS_NAME).is_file():
        preset = "small" if shipped == DEFAULT_MODEL else shipped
        raise CheckpointError(f"{hub_error}, and no shipped copy is in {local}: no '{shipped}' model is shipped yet. "
                              f"Train one with `python -m ddpm train --preset {preset} --out {local}`.")
    ckpt = load_local(local, source=f"shipped copy {local} ({hub_error})")
    ckpt.warnings.append(hub_error)
    return ckpt


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = True,
                commit_message: str = "Upload ddpm checkpoint") -> str:
    """Create ``repo_id`` on the Hub if needed (private unless ``private=False``; an existing repo keeps its
    visibility) and upload the checkpoint's own files (``PUBLISHED_NAMES`` that are in ``folder``, nothing in its
    subfolders) as one commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    read_config(folder)  # refuse to publish a folder that would not load
    names = [name for name in PUBLISHED_NAMES if (folder / name).is_file()]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.create_commit(repo_id, [CommitOperationAdd(name, str(folder / name)) for name in names],
                             commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))

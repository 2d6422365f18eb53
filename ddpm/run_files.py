"""The files of a training run: its checkpoint set written as one unit, read back with errors that name the
file, the loss log, the identity of the data it trains on, and when a folder may hold a new run.

A run folder has the layout of ``checkpoints.py``: model.safetensors (the sampling weights, EMA if any),
config.json, training_state.safetensors (the raw weights), training_state.json (counters, optimizer
settings, data identity), optimizer.safetensors (the Adam moments; shipped checkpoints leave them out)
and training_log.csv.

A save is one transaction (a redo log), so a kill at any point leaves the old step or the new one:
  1. every file of the set is written to a temporary beside it (``.NAME.STEP-TOKEN.tmp``) and synced;
  2. a commit record (``checkpoint_commit.json``: the step, each temporary with its size and sha256) is
     written and renamed into place: that rename is the commit;
  3. the temporaries are renamed over the files, then the record is removed.
A kill before 2 leaves the previous set whole (its temporaries are orphans, removed by ``recover``); a
kill after 2 is finished by ``recover``, which the trainer runs before resuming and before each save.
The loss log is appended step by step and cut back to the saved step on resume, so no step is logged
(or trained) twice.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import checkpoints as ckpt
from .checkpoints import CheckpointError

SET_NAMES = (ckpt.WEIGHTS_NAME, ckpt.CONFIG_NAME, ckpt.STATE_NAME, ckpt.OPTIMIZER_NAME, ckpt.STATE_CONFIG_NAME)
COMMIT_NAME = "checkpoint_commit.json"
RUN_NAMES = SET_NAMES + (ckpt.LOG_NAME, COMMIT_NAME)
#: written later from a run's weights (model_card.EVALUATION_NAME, the evaluation figure, preview.PREVIEW_NAME):
#: stale once the run is overwritten
DERIVED_NAMES = ("evaluation.json", "evaluation.png", "preview.npz")
LOG_HEADER = ["step", "loss", "lr", "images_per_sec", "elapsed_s"]
FINGERPRINT_IMAGES = 4096  # images hashed for the data identity, evenly spaced: cheap at any dataset size


class RunExistsError(FileExistsError):
    """A new run was pointed at a folder that already holds one; the message names the ways on."""


# ---- the three operations that change a run folder (tests replace them to kill a save at each) -------
def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- the checkpoint set, as one unit ----------------------------------------------------------------
def tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_set(folder: Path, step: int, files: dict[str, bytes]) -> None:
    """Replace the files named in ``files`` in ``folder`` all together, or (after a kill) not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    recover(folder)
    token = f"{step}-{secrets.token_hex(4)}"
    entries = {}
    for name, data in files.items():
        tmp = folder / f".{name}.{token}.tmp"
        _write(tmp, data)
        entries[name] = {"tmp": tmp.name, "bytes": len(data), "sha256": sha256(data)}
    record = folder / f".{COMMIT_NAME}.{token}.tmp"
    _write(record, json_bytes({"step": step, "files": entries}))
    _rename(record, folder / COMMIT_NAME)  # the commit
    _sync_folder(folder)
    _apply(folder, entries)


def _apply(folder: Path, entries: dict[str, dict]) -> None:
    for name, entry in entries.items():
        tmp = folder / entry["tmp"]
        if tmp.exists():
            _rename(tmp, folder / name)
    _sync_folder(folder)
    _remove(folder / COMMIT_NAME)


def recover(folder: Path) -> None:
    """Finish a save that was committed but not applied, then remove every orphan temporary."""
    record = folder / COMMIT_NAME
    if record.is_file():
        entries = _read_commit(record)
        _apply(folder, entries)
        for name, entry in entries.items():
            data = (folder / name).read_bytes() if (folder / name).is_file() else b""
            if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
                raise CheckpointError(f"{folder / name} is not the file the interrupted save of {folder} committed "
                                      "(the folder was changed by hand during the save); restore the run from a copy "
                                      "or start a fresh one in another --out")
    for path in orphans(folder):
        _remove(path)


def _read_commit(path: Path) -> dict[str, dict]:
    try:
        entries = json.loads(path.read_text())["files"]
        if isinstance(entries, dict) and all(_is_entry(name, e) for name, e in entries.items()):
            return entries
        problem = "it names files outside the checkpoint set, or its entries are malformed"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        problem = f"{type(err).__name__}: {err}"
    raise CheckpointError(f"{path} records an interrupted save but cannot be read ({problem}), so the save cannot be "
                          "finished: restore the run from a copy, or start a fresh run in another --out")


def _is_entry(name: str, entry: Any) -> bool:
    """A commit record's entry may only move a temporary of the set's own file onto that file, in its folder."""
    return (name in SET_NAMES and isinstance(entry, dict) and {"tmp", "bytes", "sha256"} <= set(entry)
            and isinstance(entry["tmp"], str) and entry["tmp"].startswith(f".{name}.") and "/" not in entry["tmp"]
            and "\\" not in entry["tmp"])


def orphans(folder: Path) -> list[Path]:
    """Temporaries of the run's files (``.NAME.*.tmp``) left behind by a killed save or log rewrite."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in RUN_NAMES))


# ---- what a resume needs beside the weights -----------------------------------------------------------
@dataclass(frozen=True)
class RunState:
    """training_state.json: where a run stands, beside its raw weights and optimizer moments."""

    step: int
    images_seen: int | None = None  # None in runs saved before it was recorded
    warmup_offset: int = 0
    train_seconds: float = 0.0
    param_groups: list[dict] = field(default_factory=list)
    world_size: int = 1
    train: dict = field(default_factory=dict)
    data: dict | None = None  # data_identity(); None in runs saved before it was recorded

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "train_seconds": round(self.train_seconds, 1)}


_STATE_TYPES = {"step": int, "images_seen": (int, type(None)), "warmup_offset": int, "train_seconds": (int, float),
                "param_groups": list, "world_size": int, "train": dict, "data": (dict, type(None))}


def read_state(folder: Path) -> RunState:
    """training_state.json of ``folder``, checked field by field; CheckpointError naming the file otherwise."""
    path = folder / ckpt.STATE_CONFIG_NAME
    fix = "restore it from a copy of the run, or start a fresh run in another --out"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing beside {ckpt.STATE_NAME}, so the run's step is unknown; {fix}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err}): it is truncated or corrupt; {fix}") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(raw).__name__}; {fix}")
    bad = _invalid_fields(raw)
    if "step" not in raw or bad:
        what = "has no step" if "step" not in raw else "holds invalid " + ", ".join(f"{k}={raw[k]!r:.60}" for k in bad)
        raise CheckpointError(f"{path} {what}; {fix}")
    return RunState(**{k: raw[k] for k in _STATE_TYPES if k in raw})


def _invalid_fields(raw: dict) -> list[str]:
    bad = []
    for key, kinds in _STATE_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if ok and isinstance(value, (int, float)):
            ok = value >= (1 if key == "world_size" else 0)  # also False for NaN
        if ok and key == "param_groups":
            ok = all(isinstance(g, dict) for g in value)
        if not ok:
            bad.append(key)
    return bad


def saved_step(folder: Path | None) -> int | None:
    """The step of the checkpoint on disk, or None when there is none (for messages only)."""
    try:
        return read_state(folder).step if folder is not None else None
    except CheckpointError:
        return None


def check_step_agrees(folder: Path, state: RunState) -> None:
    """config.json and training_state.json must describe the same step (an older ddpm could save half a set)."""
    if not (folder / ckpt.CONFIG_NAME).is_file():
        return
    training = ckpt.read_config(folder).get("training")
    steps = training.get("steps") if isinstance(training, dict) else None
    if steps is not None and steps != state.step:
        raise CheckpointError(f"{folder / ckpt.CONFIG_NAME} is at step {steps} but {folder / ckpt.STATE_CONFIG_NAME} at "
                              f"step {state.step}: the set in {folder} was left half-written by an interrupted save. "
                              "Restore the run from a copy, or start a fresh run in another --out (or with --overwrite)")


def read_tensors(path: Path, device: torch.device | str, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the run; CheckpointError naming it (and ``fix``, what to do) when unreadable."""
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}): it is truncated or corrupt; {fix}") from err


def load_raw_weights(model: nn.Module, folder: Path, device: torch.device) -> None:
    path = folder / ckpt.STATE_NAME
    fix = "restore it from a copy of the run, or start a fresh run in another --out"
    try:
        model.load_state_dict(read_tensors(path, device, fix))
    except RuntimeError as err:
        raise CheckpointError(f"{path} was written for another network ({err}); {fix}") from err


# ---- optimizer moments: flat tensors in a safetensors file, settings in training_state.json ------------
def optimizer_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat tensors named ``"{param index}.{name}"``."""
    return {f"{idx}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
            for idx, state in state_dict["state"].items() for k, v in state.items()}


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, param_groups: list[dict],
                   device: torch.device) -> bool:
    """Restore the moments saved in ``folder``; False when the run has none (shipped checkpoints)."""
    path = folder / ckpt.OPTIMIZER_NAME
    if not path.is_file():
        return False
    fix = ("delete it to resume without the optimizer moments (the learning rate then warms up again from the "
           "saved step)")
    state: dict[int, dict] = {}
    try:
        for k, v in read_tensors(path, device, fix).items():
            idx, name = k.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in param_groups]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit this network's optimizer with the param_groups of "
                              f"{folder / ckpt.STATE_CONFIG_NAME} ({type(err).__name__}: {err}); {fix}") from err
    return True


def save_run(folder: Path, sampling_model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer,
             config: dict[str, Any], state: RunState) -> None:
    """Write the whole checkpoint set of a run at ``state.step`` as one unit (see the module docstring)."""
    opt = optimizer.state_dict()
    weights = {k: v.float() if v.is_floating_point() else v for k, v in sampling_model.state_dict().items()}
    write_set(folder, state.step, {  # model.safetensors and config.json as ckpt.save_checkpoint writes them (float32)
        ckpt.WEIGHTS_NAME: tensor_bytes(weights, metadata={"format": "pt"}),
        ckpt.CONFIG_NAME: json_bytes({**config, "weights_dtype": "float32"}),
        ckpt.STATE_NAME: tensor_bytes(raw_model.state_dict()),
        ckpt.OPTIMIZER_NAME: tensor_bytes(optimizer_tensors(opt)),
        ckpt.STATE_CONFIG_NAME: json_bytes(replace(state, param_groups=opt["param_groups"]).to_json()),
    })


# ---- the loss log -------------------------------------------------------------------------------------
def append_log(folder: Path, rows: list[tuple[int, float, float]], rate: float, elapsed: float) -> None:
    """Append (step, loss, lr) rows with the current images/s and the run's elapsed seconds."""
    path = folder / ckpt.LOG_NAME
    new = not path.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(LOG_HEADER)
        for step, loss, lr in rows:
            w.writerow([step, f"{loss:.6f}", f"{lr:.3g}", f"{rate:.1f}", f"{elapsed:.1f}"])


def _log_step(line: str) -> int | None:
    """The step of a well-formed log row, else None."""
    cells = line.split(",")
    if len(cells) != len(LOG_HEADER):
        return None
    try:
        [float(c) for c in cells[1:]]
        return int(cells[0])
    except ValueError:
        return None


def truncate_log(folder: Path, step: int) -> None:
    """Drop log rows past ``step`` (they will be trained again) and a last row cut short by a kill."""
    path = folder / ckpt.LOG_NAME
    if not path.is_file():
        return
    fix = f"delete or fix it (a resumed run then starts a new log at step {step + 1})"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); {fix}") from err
    if not lines:
        return _remove(path)
    if lines[0].split(",") != LOG_HEADER:
        raise CheckpointError(f"{path} does not start with the header {','.join(LOG_HEADER)}; {fix}")
    kept = [lines[0]]
    for number, line in enumerate(lines[1:], start=2):
        row_step = _log_step(line)
        if row_step is None and number < len(lines):  # only the last row may be torn (a kill during an append)
            raise CheckpointError(f"{path} line {number} is not a log row ({line[:60]!r}); {fix}")
        if row_step is not None and row_step <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return
    tmp = folder / f".{ckpt.LOG_NAME}.{step}-{secrets.token_hex(4)}.tmp"
    _write(tmp, ("\n".join(kept) + "\n").encode())
    _rename(tmp, path)


def read_training_log(folder: str | os.PathLike) -> dict[str, list[float]]:
    """The loss log of a checkpoint folder as columns (step, loss, lr, images_per_sec, elapsed_s)."""
    cols: dict[str, list[float]] = {}
    with (Path(folder) / ckpt.LOG_NAME).open() as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                cols.setdefault(k, []).append(float(v))
    return cols


# ---- the data a run trains on -------------------------------------------------------------------------
def data_identity(images: torch.Tensor, labels: torch.Tensor | None, source: str | None) -> dict[str, Any]:
    """Where the data came from and a fingerprint of its content: the count, the image shape, every label and
    up to FINGERPRINT_IMAGES evenly spaced images (a pack and the .npz it was made from fingerprint the same)."""
    n = images.shape[0]
    h = hashlib.sha256(f"{n} {tuple(images.shape[1:])}".encode())
    if labels is not None:
        h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    idx = torch.linspace(0, n - 1, min(n, FINGERPRINT_IMAGES)).round().long().to(images.device)
    h.update(images[idx].cpu().contiguous().numpy().tobytes())
    return {"source": source, "count": n, "image_shape": list(images.shape[1:]), "fingerprint": h.hexdigest()}


def check_same_data(folder: Path, saved: dict | None, current: dict, allow_change: bool) -> str | None:
    """None when ``current`` is the data the run in ``folder`` trained on; a warning when that cannot be told
    (an older run) or the change is allowed; a ValueError naming both and the ways on otherwise."""
    if saved is None:
        return (f"{folder / ckpt.STATE_CONFIG_NAME} records no data identity (saved by an older ddpm), so ddpm cannot "
                f"check that {current['source'] or 'this data'} ({current['count']:,} images) is what the run trained "
                "on; it is recorded from the next save on")
    if saved.get("fingerprint") == current["fingerprint"]:
        return None
    change = f"the run in {folder} trained on {_describe(saved)} but this is {_describe(current)}"
    if allow_change:
        return f"{change}; going on with the new data (--allow-data-change)"
    raise ValueError(f"--resume: {change}. Resume with the data it trained on (the same --subset / --data-dir), train "
                     "into another --out, or pass --allow-data-change to continue on this data")


def _describe(identity: dict) -> str:
    count = identity.get("count")
    count = f"{count:,}" if isinstance(count, int) else "?"
    return f"{identity.get('source') or 'unnamed data'} ({count} images, fingerprint {str(identity.get('fingerprint'))[:12]})"


# ---- a folder for a new run ---------------------------------------------------------------------------
def run_files_in(folder: Path) -> list[str]:
    """The names of a run's files present in ``folder`` (its checkpoint set, log, commit record, temporaries)."""
    if not folder.is_dir():
        return []
    return [n for n in RUN_NAMES if (folder / n).exists()] + [p.name for p in orphans(folder)]


def refuse_existing_run(folder: Path, overwrite: bool) -> None:
    """A new run may not mix its files with an old run's: RunExistsError unless ``overwrite``."""
    found = run_files_in(folder)
    if found and not overwrite:
        raise RunExistsError(f"{folder} already holds a training run ({', '.join(found[:4])}{', …' if len(found) > 4 else ''}). "
                             "Pass --resume to continue it, choose another --out to keep it, or pass --overwrite to "
                             "replace it (its checkpoint, loss log and evaluation are deleted)")


def clear_run(folder: Path) -> None:
    """Delete an old run's files (and what was derived from its weights) so that a new run starts clean."""
    for name in run_files_in(folder) + [n for n in DERIVED_NAMES if (folder / n).exists()]:
        _remove(folder / name)

"""Checkpoints a visitor uploads: checked for size, layout and shape, loaded, and never kept.

An upload is a zip holding ``config.json`` and ``model.safetensors`` (what the app's download gives),
or those two files uploaded together.  Nothing is unpickled or executed: the config is JSON and the
weights are safetensors.  The files live in a temporary folder only while they are read.  An upload is
bounded by its parameters, not only its bytes: the config's network may have at most as many as
``max_bytes`` of float32 holds, and the weights file (read from its header, before any tensor) must hold
float32, float16 or bfloat16 values, exactly as many as that network has.
"""
from __future__ import annotations

import io
import math
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from safetensors import SafetensorError, safe_open

from .. import checkpoints as ckpt
from ..limits import parameter_count
from ..unet import UNetConfig

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # a 12 M-parameter float32 network; the app's models are far smaller
WANTED = (ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME)
WEIGHT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # safetensors' names: what the app reads


def check_weights_header(path: Path, model_cfg: UNetConfig, max_parameters: int) -> None:
    """Refuse, from the config and the safetensors header alone, a network above ``max_parameters``, a tensor
    stored in a dtype the app does not use (float8, integers, float64, …) or a file whose element count is
    not the config's parameter count."""
    expected = parameter_count(model_cfg)
    if expected > max_parameters:
        raise ckpt.CheckpointError(f"the uploaded config describes a network of {expected:,} parameters; uploads may "
                                   f"have at most {max_parameters:,} ({max_parameters * 4 / 1e6:.0f} MB of float32)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError):
        return  # unreadable: loading it says so, naming the file
    for name, (dtype, _) in sorted(header.items()):
        if dtype not in WEIGHT_DTYPES:
            raise ckpt.CheckpointError(f"tensor {name[:80]!r} of {ckpt.WEIGHTS_NAME} is stored as {dtype}; the app "
                                       f"reads {', '.join(WEIGHT_DTYPES.values())} weights: save it in one of those")
    found = sum(math.prod(shape) for _, shape in header.values())
    if found != expected:
        raise ckpt.CheckpointError(f"{ckpt.WEIGHTS_NAME} holds {found:,} values but the network in {ckpt.CONFIG_NAME} "
                                   f"has {expected:,} parameters: the weights and config come from different models")


def _from_zip(data: bytes, max_bytes: int) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ckpt.CheckpointError(f"the uploaded file is not a readable zip ({err}); upload the zip the app's "
                                   f"Train page gives, or {ckpt.CONFIG_NAME} and {ckpt.WEIGHTS_NAME} together") from err
    found: dict[str, bytes] = {}
    with zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename).name  # folders inside the zip are ignored, paths never used
            if name not in WANTED or info.is_dir():
                continue
            if info.file_size > max_bytes:
                raise ckpt.CheckpointError(f"{name} in the zip is {info.file_size / 1e6:.0f} MB unpacked; "
                                           f"the limit is {max_bytes / 1e6:.0f} MB")
            try:
                found[name] = zf.read(info)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as err:
                # bad CRC or deflate stream, a compression method zipfile lacks, a password, a truncated entry
                raise ckpt.CheckpointError(f"{name} in the zip cannot be unpacked ({_short(err)}); the zip is damaged, "
                                           "encrypted or compressed in a way this app does not read: make it again "
                                           "without a password (stored or deflate), or upload the two files") from None
    return found


def _short(err: BaseException, limit: int = 600) -> str:
    """An error's message cut to ``limit`` characters: a hostile file must not fill the page with its own text."""
    text = str(err) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def collect_upload(files: list[tuple[str, bytes]], max_bytes: int = MAX_UPLOAD_BYTES) -> dict[str, bytes]:
    """{config.json: bytes, model.safetensors: bytes} from uploaded (name, bytes) pairs, or a CheckpointError."""
    total = sum(len(data) for _, data in files)
    if total > max_bytes:
        raise ckpt.CheckpointError(f"the upload is {total / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    found: dict[str, bytes] = {}
    for name, data in files:
        if name.lower().endswith(".zip"):
            found.update(_from_zip(data, max_bytes))
        elif PurePosixPath(name).name in WANTED:
            found[PurePosixPath(name).name] = data
        else:
            raise ckpt.CheckpointError(f"{name!r} is not a checkpoint file: upload a .zip, or {ckpt.CONFIG_NAME} "
                                       f"and {ckpt.WEIGHTS_NAME}")
    missing = [n for n in WANTED if n not in found]
    if missing:
        raise ckpt.CheckpointError(f"the upload lacks {missing}: a checkpoint needs both {ckpt.CONFIG_NAME} and "
                                   f"{ckpt.WEIGHTS_NAME}")
    return found


def load_upload(files: list[tuple[str, bytes]], image_size: int = 28, channels: int = 3,
                max_bytes: int = MAX_UPLOAD_BYTES) -> ckpt.Checkpoint:
    """A Checkpoint from uploaded files, for a network of ``channels`` × ``image_size``² images.

    Raises CheckpointError (with what was wrong) for a corrupt, oversize, incomplete or mismatched upload, and for
    anything else that goes wrong while reading it: every failure of an upload is one message.
    """
    try:
        return _load_upload(files, image_size, channels, max_bytes)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(_short(err)) from None
    except Exception as err:  # noqa: BLE001  (a file from anyone: whatever it breaks is reported, not a traceback)
        raise ckpt.CheckpointError(f"the upload cannot be read ({type(err).__name__}: {_short(err)})") from None


def _load_upload(files: list[tuple[str, bytes]], image_size: int, channels: int, max_bytes: int) -> ckpt.Checkpoint:
    found = collect_upload(files, max_bytes)
    with tempfile.TemporaryDirectory(prefix="ddpm-upload-") as tmp:
        for name, data in found.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            model_cfg, _ = ckpt.configs_from(ckpt.read_config(Path(tmp)), Path(tmp))  # bounded, before any tensor
            if model_cfg.image_size != image_size or model_cfg.in_channels != channels:
                size = model_cfg.image_size
                raise ckpt.CheckpointError(f"the uploaded model makes {model_cfg.in_channels}×{size}×{size} images; "
                                           f"this app shows PathMNIST at {channels}×{image_size}×{image_size}")
            check_weights_header(Path(tmp) / ckpt.WEIGHTS_NAME, model_cfg, max_bytes // 4)
            loaded = ckpt.load_local(tmp, source="your uploaded checkpoint")
        except Exception as err:  # noqa: BLE001  (see load_upload); name the upload, not the temporary folder
            text = str(err) if isinstance(err, ValueError) else f"the upload cannot be read ({type(err).__name__}: {err})"
            raise ckpt.CheckpointError(text.replace(f"{tmp}/", "uploaded ").replace(tmp, "the upload")) from None
    loaded.path = None  # the temporary folder is gone
    return loaded

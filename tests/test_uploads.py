"""Uploaded checkpoints (ddpm.serving.uploads): whatever a visitor's file is, loading it gives a model or one CheckpointError."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from ddpm.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from ddpm.serving.uploads import load_upload

HEADERS = {b"PK\x03\x04": 0, b"PK\x01\x02": 2}  # local header, central directory: their fields' shift


@pytest.fixture
def files(make_tiny_checkpoint, tmp_path) -> dict[str, bytes]:
    folder, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    return {name: (folder / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def patch_headers(data: bytes, flags: int | None = None, method: int | None = None) -> bytes:
    """Set the general-purpose flags or the compression method in every local and central header of a zip."""
    out = bytearray(data)
    for signature, shift in HEADERS.items():
        at = out.find(signature)
        while at != -1:
            if flags is not None:
                out[at + 6 + shift:at + 8 + shift] = flags.to_bytes(2, "little")
            if method is not None:
                out[at + 8 + shift:at + 10 + shift] = method.to_bytes(2, "little")
            at = out.find(signature, at + 4)
    return bytes(out)


def bad_crc(files: dict[str, bytes]) -> bytes:
    data = bytearray(zipped(files))
    at = data.find(b'"format_version"')
    data[at + 1] ^= 0x20  # "Format_version": same length, another CRC
    return bytes(data)


def bad_deflate(files: dict[str, bytes]) -> bytes:
    data = bytearray(zipped(files, zipfile.ZIP_DEFLATED))
    start = 30 + len(CONFIG_NAME)  # the first entry's compressed stream follows its local header
    data[start:start + 16] = b"\xff" * 16
    return bytes(data)


ZIPS = {
    "a bad CRC": (bad_crc, "Bad CRC-32"),
    "a bad deflate stream": (bad_deflate, "cannot be unpacked"),
    "an unknown compression method": (lambda f: patch_headers(zipped(f), method=99), "compression method"),
    "an encrypted entry": (lambda f: patch_headers(zipped(f), flags=0x1), "encrypted"),
}


@pytest.mark.parametrize("case", list(ZIPS))
def test_a_damaged_or_encrypted_zip_is_one_checkpoint_error_naming_the_entry(case, files):
    make, detail = ZIPS[case]
    with pytest.raises(CheckpointError) as err:
        load_upload([("run.zip", make(files))])
    message = str(err.value)
    assert detail in message and message.startswith(("config.json in the zip", "model.safetensors in the zip"))
    assert "stored or deflate" in message


CONFIGS = {  # name: (change to config.json, what the message says)
    "JSON nested 100,000 deep": (lambda c: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "an object nested 100,000 deep": (lambda c: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    "an integer of 5,000 digits": (lambda c: json.dumps(c).replace('"format_version": 1', '"format_version": ' + "9" * 5000),
                                   "not valid JSON"),
    "a training section that is text": (lambda c: {**c, "training": "fast"}, '"training" must be an object, got str'),
    "a training section that is a list": (lambda c: {**c, "training": [1]}, '"training" must be an object, got list'),
    "a training count that is text": (lambda c: {**c, "training": {"steps": "many"}},
                                      '"training.steps" must be a whole number ≥ 0'),
    "a training value that is an object": (lambda c: {**c, "training": {"device": {"a": [1]}}},
                                           '"training.device" must be a number, text'),
    "a data source of 10 MB": (lambda c: {**c, "data": "A" * 10_000_000}, '"data" must be text of at most 2000'),
    "a data section that is an object": (lambda c: {**c, "data": {"source": 1}}, '"data" must be text'),
    "a preset that is a list": (lambda c: {**c, "preset": ["small"]}, '"preset" must be text'),
    "a lineage note that is an object": (lambda c: {**c, "init_from": {"run": 1}}, '"init_from" must be text'),
    "class names that are a number": (lambda c: {**c, "class_names": 9}, '"class_names" must be a list'),
    "an unknown section named by 1 MB": (lambda c: {**c, "x" * 1_000_000: 1}, "unknown keys"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_hostile_config_is_one_short_checkpoint_error(case, files):
    change, detail = CONFIGS[case]
    config = change(json.loads(files[CONFIG_NAME]))
    data = config if isinstance(config, bytes) else (config if isinstance(config, str) else json.dumps(config)).encode()
    with pytest.raises(CheckpointError) as err:
        load_upload([(CONFIG_NAME, data), (WEIGHTS_NAME, files[WEIGHTS_NAME])])
    assert detail in str(err.value)
    assert len(str(err.value)) < 500 and "/tmp" not in str(err.value)


def test_any_other_failure_while_reading_an_upload_is_a_checkpoint_error_too(files, monkeypatch):
    def invalid_sampling(config, path):  # as a section checked elsewhere refuses it: a ValueError, not ours
        raise ValueError("sampling.guidance must be finite")

    monkeypatch.setattr("ddpm.checkpoints.configs_from", invalid_sampling)
    with pytest.raises(CheckpointError, match="sampling.guidance must be finite"):
        load_upload(list(files.items()))
    monkeypatch.setattr("ddpm.checkpoints.configs_from", lambda config, path: 1 / 0)
    with pytest.raises(CheckpointError, match=r"the upload cannot be read \(ZeroDivisionError"):
        load_upload(list(files.items()))


def test_weights_holding_nan_are_refused_as_an_upload(files):
    from safetensors.torch import load, save

    state = load(files[WEIGHTS_NAME])
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    with pytest.raises(CheckpointError, match=f"uploaded {WEIGHTS_NAME}: tensor '{name}' holds"):
        load_upload([(CONFIG_NAME, files[CONFIG_NAME]), (WEIGHTS_NAME, save(state))])


def test_the_shipped_checkpoints_pass_the_section_checks():
    from ddpm.checkpoints import SHIPPED_DIR, optional_section_problems, read_config

    for name in ("default", "seed"):
        assert optional_section_problems(read_config(Path(SHIPPED_DIR / name))) == []

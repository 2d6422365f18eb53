"""Checkpoint folders: round trips, fp16 storage, errors that name the file, atomic writes, the Hub and its fallback."""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ddpm.checkpoints as checkpoints
from ddpm.checkpoints import (
    CONFIG_NAME,
    HUB_REPOS,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    load_local,
    make_config,
    save_checkpoint,
)
from ddpm.schedules import ScheduleConfig
from ddpm.unet import UNetConfig, build_unet
from hub_server import point_hub_client_at, unused_local_url


def outputs(model: torch.nn.Module, probe) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(*probe)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- local round trips -----------------------------------------------------------------------
def test_save_then_load_gives_the_same_network_and_configs(make_tiny_checkpoint, tmp_path, probe_input, tiny_config,
                                                            tiny_schedule_config):
    folder, model = make_tiny_checkpoint(tmp_path / "ckpt")
    loaded = load_checkpoint(folder)
    assert loaded.source == f"local folder {folder}" and loaded.path == folder
    assert loaded.model_config == tiny_config and loaded.schedule_config == tiny_schedule_config
    assert loaded.schedule.num_timesteps == 20
    assert not loaded.model.training
    assert_same_weights(loaded.model, model)
    assert torch.equal(outputs(loaded.model, probe_input), outputs(model, probe_input))
    assert loaded.config["weights_dtype"] == "float32" and loaded.config["library"] == "ddpm"


def test_fp16_weight_storage_restores_float32_with_near_identical_outputs(make_tiny_checkpoint, tmp_path, probe_input):
    folder32, model = make_tiny_checkpoint(tmp_path / "fp32")
    folder16, _ = make_tiny_checkpoint(tmp_path / "fp16", weights_dtype=torch.float16)
    with safe_open(str(folder16 / WEIGHTS_NAME), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert (folder16 / WEIGHTS_NAME).stat().st_size < 0.6 * (folder32 / WEIGHTS_NAME).stat().st_size
    loaded = load_checkpoint(folder16)
    assert loaded.config["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    expected = outputs(model, probe_input)
    torch.testing.assert_close(outputs(loaded.model, probe_input), expected, rtol=0, atol=2e-3 * expected.abs().max().item())


# ---- errors that name the file ---------------------------------------------------------------
def _rewrite_config(folder: Path, edit) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _corrupt_truncated(folder: Path) -> None:
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _corrupt_garbage(folder: Path) -> None:
    (folder / WEIGHTS_NAME).write_bytes(b"this is not a safetensors file" * 50)


def _weights_of_another_config(folder: Path) -> None:
    other = UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,), norm_groups=4)
    _rewrite_config(folder, lambda c: c.update(model=other.to_dict()))


CASES = {
    "truncated weights": (_corrupt_truncated, WEIGHTS_NAME, "corrupt or truncated"),
    "garbage weights": (_corrupt_garbage, WEIGHTS_NAME, "not a readable safetensors file"),
    "missing weights": (lambda f: (f / WEIGHTS_NAME).unlink(), WEIGHTS_NAME, "is missing"),
    "weights from another config": (_weights_of_another_config, WEIGHTS_NAME, r"wrong shapes .*different models"),
    "missing config": (lambda f: (f / CONFIG_NAME).unlink(), CONFIG_NAME, "is missing"),
    "invalid JSON": (lambda f: (f / CONFIG_NAME).write_text('{"model": '), CONFIG_NAME, "not valid JSON"),
    "not an object": (lambda f: (f / CONFIG_NAME).write_text("[1, 2]"), CONFIG_NAME, "must hold a JSON object"),
    "missing required key": (lambda f: _rewrite_config(f, lambda c: c.pop("schedule")), CONFIG_NAME,
                             r"missing keys \['schedule'\]"),
    "unknown key": (lambda f: _rewrite_config(f, lambda c: c.update(optimizer="adam")), CONFIG_NAME,
                    r"unknown keys \['optimizer'\]"),
    "unknown model config key": (lambda f: _rewrite_config(f, lambda c: c["model"].update(depth=3)), CONFIG_NAME,
                                 r"unknown model config keys \['depth'\]"),
    "invalid schedule value": (lambda f: _rewrite_config(f, lambda c: c["schedule"].update(kind="quadratic")), CONFIG_NAME,
                               "schedule kind must be one of"),
    "newer format": (lambda f: _rewrite_config(f, lambda c: c.update(format_version=2)), CONFIG_NAME, "not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_checkpoint_raises_checkpoint_error_naming_the_file(case, make_tiny_checkpoint, tmp_path):
    damage, file_name, message = CASES[case]
    folder, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(folder)
    assert str(folder / file_name) in str(err.value)


def poison_weights(folder: Path, name: str, value: float) -> None:
    """Put one non-finite ``value`` into tensor ``name`` of ``folder``'s model.safetensors."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS_NAME))
    state[name] = state[name].clone()
    state[name].view(-1)[3] = value
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_weights_holding_nan_or_inf_are_refused_at_load_naming_the_tensor(value, make_tiny_checkpoint, tmp_path):
    folder, model = make_tiny_checkpoint(tmp_path / "ckpt")
    name = next(k for k, v in model.state_dict().items() if v.is_floating_point() and v.numel() > 3)
    poison_weights(folder, name, value)
    with pytest.raises(CheckpointError, match="NaN or infinite") as err:
        load_checkpoint(folder)
    assert f"{folder / WEIGHTS_NAME}: tensor {name!r} holds 1 NaN or infinite value(s)" in str(err.value)


def test_a_path_that_is_neither_folder_nor_repo_id_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        load_checkpoint(tmp_path / "does" / "not" / "exist")
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_local(tmp_path / "missing")


# ---- how files are written -------------------------------------------------------------------
def test_saving_leaves_only_the_two_files_and_no_temporaries(make_tiny_checkpoint, tmp_path):
    folder, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    make_tiny_checkpoint(folder, seed=1)  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_a_write_that_fails_midway_keeps_the_previous_file_and_removes_its_temporary(make_tiny_checkpoint, tmp_path,
                                                                                     monkeypatch, tiny_config,
                                                                                     tiny_schedule_config):
    folder, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def half_written(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, build_unet(tiny_config), make_config(tiny_config, tiny_schedule_config))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_checkpoints_are_safetensors_and_json_and_load_without_pickle(make_tiny_checkpoint, tmp_path, monkeypatch):
    folder, model = make_tiny_checkpoint(tmp_path / "ckpt")
    data = (folder / WEIGHTS_NAME).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    assert header["__metadata__"] == {"format": "pt"} and set(header) - {"__metadata__"} == set(model.state_dict())
    json.loads((folder / CONFIG_NAME).read_text())

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint must never be unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert_same_weights(load_checkpoint(folder).model, model)


# ---- the Hub ---------------------------------------------------------------------------------
def publish(hub, name: str, folder: Path) -> None:
    """Publish a shipped model's folder to its Hub repo and tag it with the revision HUB_REPOS pins."""
    hub.add_folder(HUB_REPOS[name].repo_id, folder)
    hub.tag(HUB_REPOS[name].repo_id, HUB_REPOS[name].revision)


def test_a_repo_id_is_downloaded_from_the_hub(fake_hub, make_tiny_checkpoint, tmp_path, probe_input):
    folder, model = make_tiny_checkpoint(tmp_path / "published")
    fake_hub.add_folder("owner/name", folder)
    loaded = load_checkpoint("owner/name")
    assert loaded.source == "Hugging Face Hub owner/name"
    assert tmp_path / "hf_home" in loaded.path.parents  # from the Hub cache, not the local folder
    assert_same_weights(loaded.model, model)
    assert torch.equal(outputs(loaded.model, probe_input), outputs(model, probe_input))
    assert ("GET", f"/owner/name/resolve/main/{WEIGHTS_NAME}") in fake_hub.requests


def test_a_pinned_revision_is_downloaded_and_named_in_the_source(fake_hub, make_tiny_checkpoint, tmp_path):
    folder, model = make_tiny_checkpoint(tmp_path / "published")
    fake_hub.add_folder("owner/name", folder)
    commit = fake_hub.commit_of("owner/name")
    loaded = load_checkpoint("owner/name", revision=commit)
    assert loaded.source == f"Hugging Face Hub owner/name@{commit}"
    assert_same_weights(loaded.model, model)


def test_an_unknown_hub_repo_is_a_checkpoint_error(fake_hub):
    with pytest.raises(CheckpointError, match=r"the Hub has no checkpoint at owner/missing \(RepositoryNotFoundError\)"):
        load_checkpoint("owner/missing")


def test_a_hub_repo_without_weights_is_a_checkpoint_error(fake_hub, make_tiny_checkpoint, tmp_path):
    folder, _ = make_tiny_checkpoint(tmp_path / "published")
    fake_hub.add_repo("owner/config-only", {CONFIG_NAME: (folder / CONFIG_NAME).read_bytes()})
    with pytest.raises(CheckpointError, match="the Hub has no checkpoint at owner/config-only"):
        load_checkpoint("owner/config-only")


def test_a_corrupt_hub_checkpoint_is_reported_not_replaced_by_the_shipped_copy(fake_hub, make_tiny_checkpoint, tmp_path,
                                                                               monkeypatch):
    published, _ = make_tiny_checkpoint(tmp_path / "published")
    (published / WEIGHTS_NAME).write_bytes(b"garbage" * 100)
    publish(fake_hub, "default", published)
    monkeypatch.setattr(checkpoints, "SHIPPED_DIR", tmp_path / "shipped")
    make_tiny_checkpoint(tmp_path / "shipped" / "default")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint("default")


def test_the_default_model_comes_from_its_hub_repo_when_the_hub_is_up(fake_hub, make_tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "SHIPPED_DIR", tmp_path / "shipped")
    make_tiny_checkpoint(tmp_path / "shipped" / "default", seed=0)
    published, model = make_tiny_checkpoint(tmp_path / "published", seed=1)
    publish(fake_hub, "default", published)
    loaded = load_checkpoint()
    assert loaded.source == f"Hugging Face Hub {HUB_REPOS['default']}"
    assert str(HUB_REPOS["default"]) == f"{HUB_REPOS['default'].repo_id}@{HUB_REPOS['default'].revision}"
    assert_same_weights(loaded.model, model)


def test_a_new_push_to_main_does_not_change_what_the_pinned_default_serves(fake_hub, make_tiny_checkpoint, tmp_path):
    pinned, model = make_tiny_checkpoint(tmp_path / "pinned", seed=1)
    publish(fake_hub, "default", pinned)
    newer, newer_model = make_tiny_checkpoint(tmp_path / "newer", seed=2)
    fake_hub.add_folder(HUB_REPOS["default"].repo_id, newer)  # someone pushes other weights to main
    assert_same_weights(load_checkpoint("default").model, model)
    assert_same_weights(load_checkpoint(HUB_REPOS["default"].repo_id).model, model)  # its repo id keeps the pin
    moved = load_checkpoint(f"{HUB_REPOS['default'].repo_id}@main")  # naming another revision is explicit
    assert moved.source.endswith("@main")
    assert_same_weights(moved.model, newer_model)


def test_a_pinned_revision_the_hub_lacks_falls_back_to_the_shipped_copy_and_says_so(fake_hub, make_tiny_checkpoint,
                                                                                    tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "SHIPPED_DIR", tmp_path / "shipped")
    _, shipped = make_tiny_checkpoint(tmp_path / "shipped" / "default", seed=0)
    published, _ = make_tiny_checkpoint(tmp_path / "published", seed=1)
    fake_hub.add_folder(HUB_REPOS["default"].repo_id, published)  # on main only, never tagged
    loaded = load_checkpoint("default")
    assert loaded.source.startswith("shipped copy") and f"{HUB_REPOS['default']} (RevisionNotFoundError)" in loaded.source
    assert_same_weights(loaded.model, shipped)


def test_ddpm_model_may_name_another_repo_and_revision(fake_hub, make_tiny_checkpoint, tmp_path):
    first, first_model = make_tiny_checkpoint(tmp_path / "first", seed=1)
    fake_hub.add_folder("someone/else", first)
    commit = fake_hub.commit_of("someone/else")
    fake_hub.add_folder("someone/else", make_tiny_checkpoint(tmp_path / "second", seed=2)[0])
    loaded = load_checkpoint(f"someone/else@{commit}")
    assert loaded.source == f"Hugging Face Hub someone/else@{commit}"
    assert_same_weights(loaded.model, first_model)


def test_with_the_hub_down_the_default_model_falls_back_to_the_shipped_copy(make_tiny_checkpoint, tmp_path, monkeypatch):
    point_hub_client_at(monkeypatch, unused_local_url(), tmp_path / "hf_home")
    monkeypatch.setattr(checkpoints, "SHIPPED_DIR", tmp_path / "shipped")
    _, model = make_tiny_checkpoint(tmp_path / "shipped" / "default")
    loaded = load_checkpoint("default")
    assert loaded.source.startswith(f"shipped copy {tmp_path / 'shipped' / 'default'}")
    assert "could not be reached" in loaded.source
    assert loaded.warnings and "could not be reached" in loaded.warnings[0]  # the fallback is reported, not hidden
    assert_same_weights(loaded.model, model)
    # the shipped model's repo id falls back the same way
    assert load_checkpoint(HUB_REPOS["default"].repo_id).source.startswith("shipped copy")


def test_with_the_hub_down_and_nothing_shipped_the_error_says_how_to_train_one(tmp_path, monkeypatch):
    point_hub_client_at(monkeypatch, unused_local_url(), tmp_path / "hf_home")
    monkeypatch.setattr(checkpoints, "SHIPPED_DIR", tmp_path / "shipped")
    with pytest.raises(CheckpointError, match=r"could not be reached .*no shipped copy .*python -m ddpm train --preset seed"):
        load_checkpoint("seed")


def test_with_the_hub_down_another_repo_id_is_a_checkpoint_error(tmp_path, monkeypatch):
    point_hub_client_at(monkeypatch, unused_local_url(), tmp_path / "hf_home")
    with pytest.raises(CheckpointError, match="the Hub could not be reached for owner/name"):
        load_checkpoint("owner/name")


def test_make_config_holds_the_required_sections(tiny_config):
    config = make_config(tiny_config, ScheduleConfig.paper(), preset="seed")
    assert set(checkpoints.REQUIRED_KEYS) <= set(config)
    assert config["preset"] == "seed" and config["schedule"]["kind"] == "linear"


def test_push_to_hub_uploads_the_checkpoint_without_training_state_and_it_loads_back(fake_hub, make_tiny_checkpoint,
                                                                                      tmp_path):
    from ddpm.checkpoints import LOG_NAME, OPTIMIZER_NAME, STATE_CONFIG_NAME, STATE_NAME, push_to_hub

    folder, model = make_tiny_checkpoint(tmp_path / "run")
    for name in (STATE_NAME, OPTIMIZER_NAME, STATE_CONFIG_NAME):
        (folder / name).write_bytes(b"{}")
    (folder / LOG_NAME).write_text("step,loss\n1,0.5\n")
    url = push_to_hub(folder, "me/pushed", token="hf_test")
    commit = fake_hub.commit_of("me/pushed")
    assert url == f"{fake_hub.url}/me/pushed/commit/{commit}"
    assert sorted(fake_hub.repos["me/pushed"]) == sorted([CONFIG_NAME, LOG_NAME, WEIGHTS_NAME])  # no resumable state
    assert fake_hub.repos["me/pushed"][WEIGHTS_NAME] == (folder / WEIGHTS_NAME).read_bytes()
    assert_same_weights(load_checkpoint("me/pushed").model, model)

    make_tiny_checkpoint(folder, seed=1)  # pushing again updates the existing repo
    push_to_hub(folder, "me/pushed", token="hf_test")
    assert fake_hub.commit_of("me/pushed") != commit
    assert fake_hub.repos["me/pushed"][WEIGHTS_NAME] == (folder / WEIGHTS_NAME).read_bytes()


def test_push_uploads_only_the_checkpoints_own_top_level_files(fake_hub, make_tiny_checkpoint, tmp_path):
    from ddpm.checkpoints import LOG_NAME, PUBLISHED_NAMES, push_to_hub

    folder, _ = make_tiny_checkpoint(tmp_path / "run")
    (folder / LOG_NAME).write_text("step,loss\n1,0.5\n")
    for stray in ("notes/credentials.json", "sub/model.safetensors", "old/config.json", "secrets.json", "x.png",
                  "draft.md", ".env"):
        (folder / stray).parent.mkdir(parents=True, exist_ok=True)
        (folder / stray).write_text('{"token": "hf_secret"}')
    push_to_hub(folder, "me/pushed", token="hf_test")
    assert sorted(fake_hub.repos["me/pushed"]) == sorted([CONFIG_NAME, LOG_NAME, WEIGHTS_NAME])
    assert set(PUBLISHED_NAMES) >= {CONFIG_NAME, WEIGHTS_NAME, LOG_NAME, "README.md", "evaluation.json"}


def test_push_creates_a_private_repo_unless_asked_for_a_public_one(fake_hub, make_tiny_checkpoint, tmp_path):
    from ddpm.checkpoints import push_to_hub

    folder, _ = make_tiny_checkpoint(tmp_path / "run")
    push_to_hub(folder, "me/quiet", token="hf_test")
    push_to_hub(folder, "me/open", token="hf_test", private=False)
    assert fake_hub.private == {"me/quiet": True, "me/open": False}


def test_push_to_hub_refuses_a_folder_that_would_not_load(fake_hub, tmp_path):
    from ddpm.checkpoints import push_to_hub

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        push_to_hub(tmp_path / "empty", "me/pushed", token="hf_test")
    assert not any(method == "POST" for method, _ in fake_hub.requests)

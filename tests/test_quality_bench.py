"""bench/quality.py: shards assemble into a row, samples of other weights are never reused, a conditional
row's samples carry the classes they were asked for, and the guidance sweep's choice."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.checkpoints import make_config, save_checkpoint
from ddpm.pipeline import resolve_classes
from ddpm.unet import UNetConfig, build_unet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def quality(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality_bench", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SAMPLES", tmp_path)
    monkeypatch.setattr(module, "BATCH", 2)
    monkeypatch.setattr(module, "BATCH_GUIDED", 2)
    return module


@pytest.fixture()
def row(quality):
    return quality.Row("default", "seed", "dpmpp", 2)  # the tiny seed network keeps the test fast


def test_a_rows_name_says_its_model_sampler_steps_guidance_and_sample_count(quality):
    Row = quality.Row
    assert Row("seed (paper)", "seed", "ddpm", None).name == "seed (paper) DDPM all steps"
    assert Row("default", "default", "dpmpp", 20, 1.5).name == "default DPM-Solver++ 20, guidance 1.5"
    assert Row("default", "default", "ddpm", None, 2.0, n=1000).name == "default DDPM all steps, guidance 2 (n = 1000)"


def test_shards_assemble_into_the_row_with_the_sum_of_their_times(quality, row, tmp_path):
    for index in range(3):
        images, _, _, threads, labels = quality.samples_for(row, 5, 0, False, shard=(index, 3))
        assert images.shape == ((1 if index < 2 else 3), 3, 28, 28) and images.dtype == torch.uint8
        assert threads == torch.get_num_threads()
        assert labels is None  # an unconditional model
    parts = [np.load(quality.cache_path(row.name, 5, 0, f"shard{i}of3")) for i in range(3)]
    images, per_1000, _, _, labels = quality.samples_for(row, 5, 0, False)
    assert labels is None
    assert torch.equal(images, torch.from_numpy(np.concatenate([p["images"] for p in parts])))
    assert per_1000 == pytest.approx(sum(float(p["seconds"]) for p in parts) * 1000 / 5)
    # shard 0 keeps the row's seed; the others draw other noise
    whole = quality.samples_for(row, 5, 0, True)[0]
    diff = (whole.int() - images.int()).abs().float()
    assert diff[0].max() <= 2  # bf16 kernels may round differently for another batch size
    assert diff[1].mean() > 10


def test_samples_of_other_weights_are_regenerated(quality, row, monkeypatch):
    first = quality.samples_for(row, 2, 0, False)[0]
    cache = quality.cache_path(row.name, 2, 0)
    with np.load(cache) as f:
        stored = dict(f)
    np.savez(cache, **{**stored, "images": np.zeros_like(stored["images"])})  # a cache we can recognise
    assert quality.samples_for(row, 2, 0, False)[0].sum() == 0  # same weights: the cache is used
    monkeypatch.setattr(quality, "weights_fingerprint", lambda model: "retrained")
    again = quality.samples_for(row, 2, 0, False)[0]
    assert torch.equal(again, first)  # regenerated (same seed, same weights underneath)
    with np.load(cache) as f:
        assert str(f["fingerprint"]) == "retrained"


def test_fingerprint_changes_with_any_weight(quality):
    from ddpm.checkpoints import load_checkpoint

    model = load_checkpoint("seed").model
    before = quality.weights_fingerprint(model)
    assert quality.weights_fingerprint(model) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert quality.weights_fingerprint(model) != before


# ---- conditional rows and the guidance sweep ------------------------------------------------------
@pytest.fixture()
def conditional_checkpoint(tmp_path_factory, tiny_config, tiny_schedule_config) -> Path:
    folder = tmp_path_factory.mktemp("conditional")
    config = UNetConfig.from_dict({**tiny_config.to_dict(), "num_classes": 9})
    torch.manual_seed(0)
    model = build_unet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(folder, model, make_config(config, tiny_schedule_config))
    return folder


def test_a_conditional_rows_cached_samples_carry_the_classes_they_were_asked_for(quality, conditional_checkpoint,
                                                                                 monkeypatch):
    batches, real_generate = [], quality.generate

    def generate(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(quality, "generate", generate)
    monkeypatch.setattr(quality, "BATCH_GUIDED", 3)  # BATCH is 2
    row = quality.Row("tiny", str(conditional_checkpoint), "dpmpp", 2, guidance=2.0, n=4)
    images, _, _, _, labels = quality.samples_for(row, 1000, 0, False)  # the row's own n wins over the table's
    assert images.shape == (4, 3, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels, resolve_classes(9, 4, None, seed=0))  # drawn from the prior with the row's seed
    assert batches == [3]  # a guided row takes BATCH_GUIDED (its network call is on twice that)
    with np.load(quality.cache_path(row.name, 4, 0)) as f:
        assert f["labels"].tolist() == labels.tolist()
    again = quality.samples_for(row, 1000, 0, False)  # from the cache
    assert batches == [3] and torch.equal(again[0], images) and torch.equal(again[4], labels)


def test_sharded_conditional_rows_keep_each_shards_classes(quality, conditional_checkpoint):
    row = quality.Row("tiny", str(conditional_checkpoint), "ddim", 2, guidance=1.0)
    parts = [quality.samples_for(row, 4, 0, False, shard=(i, 2))[4] for i in range(2)]
    assert torch.equal(parts[0], resolve_classes(9, 2, None, seed=quality.shard_seed(0, 0)))
    assert torch.equal(parts[1], resolve_classes(9, 2, None, seed=quality.shard_seed(0, 1)))
    assert torch.equal(quality.samples_for(row, 4, 0, False)[4], torch.cat(parts))


def test_guidance_must_match_whether_the_model_is_conditional(quality, conditional_checkpoint):
    with pytest.raises(ValueError, match="a guidance scale goes with a conditional model"):
        quality.samples_for(quality.Row("tiny", str(conditional_checkpoint), "dpmpp", 2), 2, 0, False)
    with pytest.raises(ValueError, match="a guidance scale goes with a conditional model"):
        quality.samples_for(quality.Row("default", "seed", "dpmpp", 2, guidance=2.0), 2, 0, False)


def test_the_chosen_guidance_waits_for_the_whole_sweep_then_takes_the_lowest_fd(quality):
    sweep = {quality.Row("default", "default", "dpmpp", 20, g).name: g for g in quality.GUIDANCE_SWEEP}
    fd = {0.0: 9.0, 1.0: 5.0, 1.5: 3.0, 2.0: 2.5, 3.0: 4.0, 4.0: 6.0}
    full = {"rows": {name: {"fd": fd[g]} for name, g in sweep.items()}}
    assert quality.chosen_guidance(full) == 2.0
    assert quality.chosen_guidance({"rows": {}}) is None
    missing = {"rows": {name: m for name, m in full["rows"].items() if sweep[name] != 4.0}}
    assert quality.chosen_guidance(missing) is None
    unscored = {"rows": {**full["rows"], next(iter(sweep)): {"fd": None}}}
    assert quality.chosen_guidance(unscored) is None
    other_rows = {"rows": {**full["rows"], "seed (paper) DDPM all steps": {"fd": 0.1}}}  # only sweep rows count
    assert quality.chosen_guidance(other_rows) == 2.0
    assert quality.rows_for({"rows": {}})[-1].guidance == quality.GUIDANCE_SWEEP[-1]  # before the choice: the sweep ends
    after = [r for r in quality.rows_for(full)[2 + len(sweep):] if r.band is None]
    assert after and {r.guidance for r in after} == {2.0}  # after: the later rows use it, and so does the band sweep's reference


def test_the_band_sweep_scores_a_coarse_grid_then_its_finalists_then_chooses_the_lowest_fd_at_the_tables_n(quality,
                                                                                                    monkeypatch):
    table = {"rows": {quality.sweep_row(g).name: {"fd": 5.0 - (g == 1.5)} for g in quality.GUIDANCE_SWEEP}}
    coarse = quality.coarse_rows(1.5)
    assert coarse[0].band is None and coarse[0].guidance == 1.5 and all(r.n == quality.COARSE_N for r in coarse)
    assert [(r.guidance, r.band) for r in coarse[1:]] == list(quality.BAND_SWEEP)
    assert set(coarse) <= set(quality.rows_for(table))
    assert quality.finalist_rows(table) == [] and quality.chosen_row(table) == quality.sweep_row(1.5)
    monkeypatch.setattr(quality, "FINALISTS", 2)
    fds = dict(zip(coarse[1:], [3.5, 3.9, 3.0, 3.2, 3.6, 3.4, 3.7, 3.3]))  # (2.5, 30-130) then (2.5, 20-160) are the best two
    table["rows"].update({r.name: {"fd": fd} for r, fd in fds.items()})
    finalists = quality.finalist_rows(table)
    assert [(r.guidance, r.band, r.n) for r in finalists] == [(2.5, (30, 130), None), (2.5, (20, 160), None)]
    assert quality.chosen_setting(table) is None and quality.chosen_row(table) == quality.sweep_row(1.5)  # not scored yet
    table["rows"][finalists[0].name] = {"fd": 3.3}
    table["rows"][finalists[1].name] = {"fd": 3.1}
    assert quality.chosen_setting(table) == (2.5, (20, 160))
    assert quality.chosen_row(table).spec.guidance_interval == (20, 160)
    steps = [r for r in quality.rows_for(table) if (r.guidance, r.band, r.n) == (2.5, (20, 160), quality.COARSE_N)]
    assert sorted(r.steps for r in steps) == [20, 30, 50]
    table["rows"].update({r.name: {"fd": 4.1} for r in finalists})  # worse than every-step guidance: no band
    assert quality.chosen_setting(table) == (1.5, None) and quality.chosen_row(table) == quality.sweep_row(1.5)


def test_more_steps_at_the_chosen_setting_are_recommended_only_if_they_win_at_the_tables_n(quality):
    table = {"rows": {quality.sweep_row(g).name: {"fd": 4.0} for g in quality.GUIDANCE_SWEEP}}
    coarse = quality.coarse_rows(quality.chosen_guidance(table))
    table["rows"].update({r.name: {"fd": 3.0 if r.band == (30, 130) and r.guidance == 2.5 else 3.5} for r in coarse})
    (finalist,) = quality.finalist_rows(table)
    table["rows"][finalist.name] = {"fd": 3.2}
    assert quality.chosen_row(table) == finalist and quality.step_finalist(table) is None
    steps = quality.step_rows(table)
    assert [(r.steps, r.n, r.guidance, r.band) for r in steps] == [(k, quality.COARSE_N, 2.5, (30, 130))
                                                                    for k in quality.STEP_SWEEP]
    table["rows"].update({r.name: {"fd": fd} for r, fd in zip(steps, [3.0, 2.7, 2.8])})  # 30 steps win on the grid
    more = quality.step_finalist(table)
    assert (more.steps, more.n) == (30, None) and more in quality.rows_for(table)
    assert quality.chosen_row(table) == finalist  # not scored at the table's n yet
    table["rows"][more.name] = {"fd": 3.3}
    assert quality.chosen_row(table) == finalist  # worse at the table's n: 20 steps stay
    table["rows"][more.name] = {"fd": 2.9}
    assert quality.chosen_row(table) == more and quality.chosen_row(table).spec.steps == 30

"""The evaluation report on the bundled subset: every metric with its floor, copies caught, bad input refused, the CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.data import CLASS_NAMES, to_hwc_numpy
from ddpm.evaluation.encoder import EncoderConfig, TissueEncoder, save_encoder
from ddpm.evaluation.report import METRIC_KEYS, NEAREST_SHOWN, ReferenceData, evaluate_images, evaluation_panel, load_reference

# 60 samples in a 256-d feature space have a singular covariance: scipy says so on every FD, as expected here
pytestmark = pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")

#: Untrained, and narrower than the shipped encoder (same layers, same 256-d embedding) so a report takes ~1 s.
TEST_ENCODER = EncoderConfig(channels=(8, 16, 32))
N_GENERATED = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> ReferenceData:
    return load_reference(tmp_path_factory.mktemp("no-pathmnist-here"))


@pytest.fixture(scope="module")
def encoder() -> TissueEncoder:
    torch.manual_seed(0)
    return TissueEncoder(TEST_ENCODER).eval()


@pytest.fixture(scope="module")
def copies_report(reference, encoder) -> tuple[dict, list[tuple[float, str]]]:
    """The report for 60 exact copies of training patches posing as generated ones, and the progress calls it made."""
    calls = []
    report = evaluate_images(reference.train.images[:N_GENERATED].clone(), reference, encoder,
                             callback=lambda fraction, message: calls.append((fraction, message)))
    return report, calls


def test_without_the_full_file_the_reference_is_the_bundled_subset_split_in_halves_with_a_note(reference):
    assert len(reference.train) == len(reference.reference) == 900 and reference.test is None
    assert "not found" in reference.note and "bundled subset's halves" in reference.note
    assert "first half as train" in reference.train.source and "second half as reference" in reference.reference.source
    assert not torch.equal(reference.train.images[:5], reference.reference.images[:5])


def test_the_report_has_every_metric_for_the_samples_and_for_the_real_versus_real_floor(copies_report, reference):
    report, _ = copies_report
    assert set(METRIC_KEYS) <= set(report["metrics"]) and set(METRIC_KEYS) <= set(report["floor"])
    assert all(np.isfinite(v) for v in [*report["metrics"].values(), *report["floor"].values()])
    for part in ("metrics", "floor"):
        m = report[part]
        assert all(0 <= m[k] <= 1 for k in ("precision", "recall", "coverage", "class_tv", "memorization_share"))
    protocol = report["protocol"]
    assert protocol["n_generated"] == N_GENERATED and protocol["n_reference"] == 900
    assert protocol["note"] == reference.note  # the subset stand-in is stated in the report, not hidden
    assert "centre_shift" not in report  # the subset has no test split
    assert report["class_names"] == list(CLASS_NAMES)


def test_the_report_histograms_are_normalised_over_the_nine_classes_and_three_channels(copies_report):
    report, _ = copies_report
    for hist in report["class_hist"].values():
        assert len(hist) == 9 and sum(hist) == pytest.approx(1.0)
    np.testing.assert_allclose(report["class_hist"]["train_prior"], np.full(9, 1 / 9), atol=0.02)  # stratified subset
    for hist in report["color_hist"].values():
        assert np.array(hist).shape == (3, 32)
        np.testing.assert_allclose(np.array(hist).sum(1), 1.0)
    assert sum(report["ratio_histogram"]) == N_GENERATED


def test_exact_copies_of_training_patches_are_all_flagged_while_the_held_out_floor_is_not(copies_report):
    report, _ = copies_report
    assert report["metrics"]["memorization_share"] == 1.0
    assert report["floor"]["memorization_share"] == 0.0
    assert report["metrics"]["median_nn_pixel_l2"] == 0.0 and report["floor"]["median_nn_pixel_l2"] > 1.0
    nearest = report["nearest"]
    assert len(nearest["index"]) == min(N_GENERATED, NEAREST_SHOWN)
    assert nearest["index"] == list(range(N_GENERATED))  # each copy's nearest training patch is its source
    assert nearest["pixel_l2"] == [0.0] * N_GENERATED and nearest["ratio"] == [0.0] * N_GENERATED


def test_progress_is_reported_in_increasing_fractions_up_to_done(copies_report):
    _, calls = copies_report
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and calls[-1][1] == "done"
    assert any("floor" in message for _, message in calls)


def test_held_out_real_patches_as_samples_are_not_flagged_as_copies(reference, encoder):
    report = evaluate_images(reference.reference.images[-N_GENERATED:].clone(), reference, encoder, with_floor=False)
    assert "floor" not in report
    assert report["metrics"]["memorization_share"] == 0.0
    assert max(report["nearest"]["index"]) < len(reference.train) and min(report["nearest"]["index"]) >= 0


@pytest.mark.parametrize("images, message", [
    (torch.zeros(49, 3, 28, 28, dtype=torch.uint8), "at least 50"),
    (torch.zeros(60, 3, 28, 28), "must be uint8"),
    (torch.zeros(60, 28, 28, 3, dtype=torch.uint8), "must be uint8"),
    (torch.zeros(60, 28, 28, dtype=torch.uint8), "must be uint8"),
])
def test_too_few_images_or_the_wrong_dtype_or_layout_is_a_value_error(images, message):
    with pytest.raises(ValueError, match=message):
        evaluate_images(images)  # refused before any data or encoder is loaded


@pytest.mark.parametrize("n", [50, 64])
def test_the_evaluation_panel_shows_samples_beside_real_patches_for_any_allowed_count(n, copies_report, reference):
    report, _ = copies_report
    generated = to_hwc_numpy(torch.cat([reference.train.images, reference.train.images])[:n])
    panel = evaluation_panel(generated, reference, report)
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    np.testing.assert_array_equal(panel[2:30, 2:30], generated[0])  # the first tile is the first sample
    real_left = (8 * 30 + 2) + 12  # one 8-column grid (28 px tiles + 2 px padding) and the 12 px gutter
    np.testing.assert_array_equal(panel[2:30, real_left + 2:real_left + 30], to_hwc_numpy(reference.reference.images[:1])[0])


def test_the_evaluate_command_samples_scores_and_writes_the_json_report_and_panel(make_tiny_checkpoint, tmp_path, capsys):
    checkpoint, _ = make_tiny_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(0)
    save_encoder(tmp_path / "encoder", TissueEncoder(TEST_ENCODER), {})
    out = tmp_path / "ev"
    rc = main(["evaluate", "--checkpoint", str(checkpoint), "--encoder", str(tmp_path / "encoder"),
               "--data-dir", str(tmp_path / "no-data"), "-n", "60", "--steps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning: PathMNIST file" in captured.out  # the subset stand-in is announced
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(METRIC_KEYS) <= set(report["metrics"]) and set(METRIC_KEYS) <= set(report["floor"])
    sampling = report["sampling"]
    assert (sampling["sampler"], sampling["steps"], sampling["seed"]) == ("dpmpp", 2, 0)
    # both are rounded to 0.1 from the same unrounded time: seconds ± 0.05 s is ± 0.83 s per 1000 at n = 60
    assert sampling["seconds_per_1000"] == pytest.approx(sampling["seconds"] * 1000 / 60, abs=0.05 * 1000 / 60 + 0.05)
    assert sampling["checkpoint"] == f"local folder {checkpoint}"
    assert report["protocol"]["n_generated"] == 60
    with Image.open(out.with_suffix(".png")) as png:
        assert png.mode == "RGB" and png.width > 2 * (8 * 30 + 2)  # two 8-column grids side by side (scale 2)

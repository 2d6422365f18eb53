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
from ddpm.evaluation.memorization import COPY_RATIO
from ddpm.evaluation.report import (METRIC_KEYS, MIN_PER_CLASS, NEAREST_SHOWN, ReferenceData, conditional_accuracy,
                                    evaluate_images, evaluation_panel, load_reference, per_class_metrics)

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


# ---- conditional models: accuracy and the per-tissue table ----------------------------------------
def one_hot(classes: np.ndarray, k: int = 9) -> np.ndarray:
    return np.eye(k)[classes]


def test_conditional_accuracy_is_the_share_whose_most_likely_class_is_the_one_asked_for():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    assert conditional_accuracy(probs, np.array([0, 1, 1, 2])) == 0.5
    assert conditional_accuracy(probs, np.array([0, 1, 2, 0])) == 1.0
    assert conditional_accuracy(probs, np.array([1, 0, 0, 1])) == 0.0


@pytest.fixture(scope="module")
def per_class_rows() -> list[dict]:
    """Synthetic 4-d features: 60 samples asked for adipose (shifted by 3 from the reference), 10 for background,
    60 for debris (whose reference has only 30 patches), none for the rest."""
    rng = np.random.default_rng(0)
    requested = np.repeat([0, 1, 2], [60, 10, 60])
    feats = rng.normal(size=(130, 4)) + 3.0 * (requested == 0)[:, None]
    ref_counts = [60, 60, 30] + [60] * 6
    ref_labels = np.repeat(np.arange(9), ref_counts)
    ref_feats = rng.normal(size=(len(ref_labels), 4))
    train_labels = np.repeat(np.arange(9), 80)
    train_feats = rng.normal(size=(len(train_labels), 4))
    predicted = requested.copy()
    predicted[45:60] = 1  # 45 of 60 adipose samples look like adipose
    predicted[70:130] = 3  # no debris sample looks like debris
    ratio = np.full(130, 0.9)
    ratio[:15] = 0.1  # 15 of 60 adipose samples are copies
    ratio[70:] = COPY_RATIO  # on the threshold: not a copy
    return per_class_metrics(ref_feats, ref_labels, feats, one_hot(predicted), requested, ratio, train_feats, train_labels)


def test_per_class_metrics_give_one_row_per_tissue_with_accuracy_and_copy_share(per_class_rows):
    assert [r["class"] for r in per_class_rows] == list(CLASS_NAMES)
    assert [r["n"] for r in per_class_rows] == [60, 10, 60] + [0] * 6
    adipose, background, debris = per_class_rows[:3]
    assert (adipose["conditional_accuracy"], adipose["memorization_share"]) == (0.75, 0.25)
    assert (background["conditional_accuracy"], background["memorization_share"]) == (1.0, 0.0)
    assert (debris["conditional_accuracy"], debris["memorization_share"]) == (0.0, 0.0)
    assert all(r == {"class": r["class"], "n": 0} for r in per_class_rows[3:])  # nothing asked: nothing to score


def test_per_class_fd_needs_min_per_class_samples_and_reference_patches(per_class_rows):
    assert MIN_PER_CLASS == 50
    adipose, background, debris = per_class_rows[:3]
    assert "fd" not in background and "fd_floor" not in background  # 10 samples < MIN_PER_CLASS
    assert "fd" not in debris and "fd_floor" not in debris  # 60 samples, but only 30 reference patches
    assert adipose["fd"] == pytest.approx(4 * 3.0**2, rel=0.25)  # ‖μ shift‖² dominates
    assert 0 <= adipose["fd_floor"] < 2  # real against real of the same distribution


def test_a_report_with_requested_classes_adds_conditional_accuracy_and_the_per_tissue_table(reference, encoder):
    images = reference.reference.images[-N_GENERATED:].clone()
    requested = reference.reference.labels[-N_GENERATED:].clone()
    report = evaluate_images(images, reference, encoder, with_floor=False, requested=requested)
    assert 0 <= report["metrics"]["conditional_accuracy"] <= 1
    assert [r["n"] for r in report["per_class"]] == np.bincount(requested.numpy(), minlength=9).tolist()
    assert report["requested_hist"] == pytest.approx((np.bincount(requested.numpy(), minlength=9) / N_GENERATED).tolist())
    with pytest.raises(ValueError, match="one class per generated image"):
        evaluate_images(images, reference, encoder, with_floor=False, requested=requested[:-1])


def test_a_report_without_memorization_skips_the_copy_search_and_keeps_the_other_metrics(reference, encoder):
    images = reference.reference.images[-N_GENERATED:].clone()
    requested = reference.reference.labels[-N_GENERATED:].clone()
    full = evaluate_images(images, reference, encoder, with_floor=False, requested=requested)
    quick = evaluate_images(images, reference, encoder, with_floor=False, requested=requested, with_memorization=False)
    copies = {"memorization_share", "memorization_share_encoder", "median_nn_ratio", "median_nn_pixel_l2"}
    assert copies <= set(full["metrics"]) and not copies & set(quick["metrics"])
    assert "nearest" not in quick and "ratio_histogram" not in quick
    assert all("memorization_share" not in row for row in quick["per_class"])
    same = {k: v for k, v in full["metrics"].items() if k not in copies}
    assert {k: quick["metrics"][k] for k in same} == same

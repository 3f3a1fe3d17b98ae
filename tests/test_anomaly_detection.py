"""Anomaly detection (PatchCore): the threshold rule, refusals of bad data, train -> reload -> detect.

The smoke tests use timm's tiny random ``test_efficientnet``; the test that a drawn defect is
found uses the real embedded default backbone at a small input size.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image, ImageDraw

from common.anomaly_features import PatchFeatureExtractor, default_layers
from common.anomaly_files import load_anomaly_config, load_memory_banks
from common.anomaly_metrics import image_metrics, pixel_auroc, pro_score
from common.anomaly_scores import nearest_distances
from common.anomaly_threshold import (
    false_reject_rate,
    fit_threshold,
    is_anomalous,
    normalise_scores,
    target_reachable,
    threshold_rank,
)
from common.checkpoint_files import ANOMALY_FILE, MEMORY_BANK_FILE, MODEL_CARD_FILE, SCORE_HISTOGRAM_PLOT
from common.checkpoints import ModelLoadError
from datagen.steel import draw_steel
from pipelines.anomaly_detection import AnomalyDetector
from pipelines.anomaly_detection import cli as detect_cli
from train.anomaly_detection import train as anomaly_train
from train.anomaly_detection.coreset import coreset, coreset_indices
from train.anomaly_detection.data import find_products, load_checked_images
from train.data import DataError

STRIP = (48, 192)  # (h, w) of the generated steel strips: small, so every test stays fast


def write_strips(folder: Path, count: int, seed: int, size=STRIP) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ = draw_steel(np.random.default_rng([seed, index]), *size, classes=())
        paths.append(folder / f"{index:03d}.png")
        image.save(paths[-1])
    return paths


def train_args(train_dir, output_dir, backbone, *extra: str) -> list[str]:
    return [
        "--train_dir", str(train_dir), "--output_dir", str(output_dir), "--backbone", str(backbone),
        "--image_size", f"{STRIP[0]}x{STRIP[1]}", "--no_progress", *extra,
    ]  # fmt: skip


# --- the threshold rule ----------------------------------------------------------------------


def test_threshold_fitted_on_good_scores_hits_its_false_reject_target():
    rng = np.random.default_rng(0)
    good = rng.normal(10.0, 2.0, 20_000)
    threshold = fit_threshold(good, 0.05)
    # The 95th percentile of N(10, 2) is 10 + 1.645 * 2.
    assert threshold == pytest.approx(13.29, abs=0.08)
    assert false_reject_rate(normalise_scores(good, threshold)) <= 0.05
    fresh = rng.normal(10.0, 2.0, 200_000)
    assert false_reject_rate(normalise_scores(fresh, threshold)) == pytest.approx(0.05, abs=0.004)
    # Normalised: 1.0 is the threshold, which itself still passes.
    assert is_anomalous(normalise_scores([threshold], threshold))[0] is np.False_
    assert is_anomalous(1.0001) and not is_anomalous(0.9999)


def test_threshold_with_too_few_images_for_the_target_rejects_none_of_them():
    scores = [3.0, 1.0, 2.0, 5.0, 4.0, 9.0, 7.0, 8.0, 6.0]
    assert fit_threshold(scores, 0.01) == 9.0 and not target_reachable(9, 0.01)  # 9 images cannot promise 1%
    # ceil((9 + 1) * 0.8) = 8: one of nine above; the plain 80th percentile would let one more through.
    assert fit_threshold(scores, 0.2) == 8.0 and target_reachable(9, 0.2)
    assert fit_threshold(scores[:4], 0.2) == 5.0  # ceil(5 * 0.8) = 4: the largest of four
    assert threshold_rank(99, 0.01) == 99  # not 100: (99 + 1) * 0.99 is 99.00000000000001 in floats


def test_threshold_from_200_good_images_keeps_a_1_percent_target_for_new_ones():
    # 2000 lines, each fitted on 200 scores of N(0, 1); a new good image's rejection chance is the
    # normal tail above each line. Conformal rank 199 of 200 promises at most 1% on average
    # (2 / 201 = 0.995%); the plain quantile (2 of 200 above) would give 1.5%.
    rng = np.random.default_rng(0)
    thresholds = np.array([fit_threshold(rng.standard_normal(200), 0.01) for _ in range(2000)])
    rates = scipy.stats.norm.sf(thresholds)
    assert 0.009 < rates.mean() <= 0.0105
    assert abs(rates.mean() - 2 / 201) < 0.0005


@pytest.mark.parametrize(
    ("scores", "rate", "message"),
    [([], 0.01, "at least one"), ([1.0, np.nan], 0.01, "NaN"), ([1.0], 0.0, "--false_reject_rate"),
     ([1.0], 1.0, "--false_reject_rate")],
)  # fmt: skip
def test_threshold_refuses_bad_input(scores, rate, message):
    with pytest.raises(ValueError, match=message):
        fit_threshold(scores, rate)


# --- library pieces -----------------------------------------------------------------------


def test_chunked_nearest_neighbours_match_brute_force():
    torch.manual_seed(0)
    queries, bank = torch.randn(1000, 16), torch.randn(300, 16)
    distances, indices = nearest_distances(queries, bank, chunk_size=128)
    exact = torch.cdist(queries, bank, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(indices, exact.argmin(dim=1))
    assert torch.allclose(distances, exact.min(dim=1).values, atol=1e-4)
    with pytest.raises(ValueError, match="channels"):
        nearest_distances(queries, torch.randn(3, 8))


def test_greedy_coreset_covers_every_cluster():
    # 1000 points in one tight cluster and 5 far-off points: a random 1% sample would miss the
    # outliers; k-center greedy must keep them, since each is the farthest point from the rest.
    torch.manual_seed(0)
    outliers = torch.randn(5, 32) * 0.01 + torch.arange(1, 6)[:, None] * 10.0
    features = torch.cat([torch.randn(1000, 32) * 0.1, outliers])
    chosen = set(coreset_indices(features, 10, projection_dim=8).tolist())
    assert set(range(1000, 1005)) <= chosen
    assert coreset(features, 1.0).shape == features.shape
    with pytest.raises(ValueError, match="--coreset_ratio"):
        coreset(features, 0.0)


def test_default_layers_are_the_stride_8_and_16_stages(default_dir):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(default_dir)
    assert default_layers(model) == ["timm_model.blocks.2", "timm_model.blocks.4"]
    embedding = PatchFeatureExtractor(model, default_layers(model))(torch.zeros(1, 3, 64, 96))
    assert embedding.shape == (1, 40 + 112, 8, 12)  # stride 8; channels of both stages


def test_metrics_of_a_perfect_and_a_useless_map():
    masks = [np.zeros((8, 8), bool), np.zeros((8, 8), bool)]
    masks[1][2:4, 2:4] = True
    masks[1][6:8, 5:8] = True
    perfect = [m.astype(float) for m in masks]
    assert pixel_auroc(perfect, masks) == 1.0
    assert pro_score(perfect, masks) == pytest.approx(1.0)
    inverted = [1.0 - m for m in perfect]
    assert pro_score(inverted, masks) < 0.05
    metrics = image_metrics(np.array([0.5, 0.8, 1.2]), np.array([1.5, 3.0]))
    assert metrics["image_auroc"] == 1.0
    assert metrics["false_reject_rate"] == pytest.approx(1 / 3)
    assert metrics["f1_at_threshold"] == pytest.approx(0.8)  # 2 TP, 1 FP, 0 FN
    assert metrics["f1_optimal"] == 1.0 and 1.2 < metrics["f1_optimal_threshold"] <= 1.5


# --- bad data is refused with the flag, the value and the fix -------------------------------


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="empty"):
        find_products(tmp_path)


def test_one_image_is_refused(tmp_path):
    write_strips(tmp_path / "good", 1, seed=0)
    with pytest.raises(DataError, match=r"'good'.*1 good image.*at least 5"):
        find_products(tmp_path / "good")


def test_mixed_sizes_are_refused(tmp_path):
    paths = write_strips(tmp_path, 5, seed=0)
    Image.new("RGB", (100, 40)).save(paths[-1])
    with pytest.raises(DataError, match=r"mixes image sizes.*004.png is 100x40"):
        load_checked_images(paths, "strips")


def test_images_beside_product_folders_are_refused(tmp_path):
    write_strips(tmp_path, 5, seed=0)
    write_strips(tmp_path / "other", 5, seed=1)
    with pytest.raises(DataError, match="both images and sub-folders"):
        find_products(tmp_path)


def test_the_command_line_refuses_bad_data_without_a_traceback(tmp_path, tiny_timm_dir, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exited:
        anomaly_train.main(train_args(tmp_path / "empty", tmp_path / "out", tiny_timm_dir))
    assert str(exited.value.code).startswith("error: --train_dir") and "empty" in str(exited.value.code)
    with pytest.raises(SystemExit) as exited:
        anomaly_train.main(train_args(tmp_path, tmp_path / "out", tiny_timm_dir, "--false_reject_rate", "1.5"))
    assert "--false_reject_rate 1.5" in str(exited.value.code)
    with pytest.raises(SystemExit) as exited:
        anomaly_train.main(train_args(tmp_path, tmp_path / "out", tiny_timm_dir, "--folds", "1"))
    assert "--folds 1 must be at least 2" in str(exited.value.code)
    with pytest.raises(SystemExit) as exited:
        anomaly_train.main(train_args(tmp_path, tmp_path / "out", tiny_timm_dir, "--holdout_fraction", "0.2"))
    assert "--holdout_fraction 0.2 is no longer used" in str(exited.value.code) and "--folds" in str(exited.value.code)


# --- train -> reload -> detect ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory, tiny_timm_dir):
    """A detector trained with the tiny random backbone on 10 good strips, and its data."""
    root = tmp_path_factory.mktemp("anomaly")
    write_strips(root / "strips", 10, seed=0)
    out = root / "detector"
    assert anomaly_train.main(train_args(root / "strips", out, tiny_timm_dir)) == 0
    return out, root


def test_training_writes_a_checkpoint_that_reloads_with_the_same_scores(tiny_detector):
    out, root = tiny_detector
    for name in (ANOMALY_FILE, MEMORY_BANK_FILE, MODEL_CARD_FILE, SCORE_HISTOGRAM_PLOT, "config.json"):
        assert (out / name).is_file(), name
    config = load_anomaly_config(out)
    rule = config.products["strips"]
    assert (rule.n_train_images, rule.n_holdout_images, rule.folds) == (10, 10, 5)
    assert rule.image_size == list(STRIP)
    assert load_memory_banks(out, config)["strips"].shape[0] == rule.bank_size
    assert "python -m train.anomaly_detection --train_dir" in (out / MODEL_CARD_FILE).read_text()

    detector = AnomalyDetector.from_pretrained(out)
    files = sorted((root / "strips").glob("*.png"))
    results = detector.detect_batch(files)
    # Each image was scored for the threshold by the other folds' coresets; the stored bank holds
    # those and its own fold's, so every patch's nearest neighbour is as near or nearer on reload.
    out_of_fold = np.asarray(rule.held_out_scores) / rule.threshold
    assert out_of_fold.max() == pytest.approx(1.0)  # 10 images cannot promise 1%: the largest is the line
    reloaded = np.array([r.score for r in results])
    assert (reloaded <= out_of_fold + 1e-5).all() and (reloaded < out_of_fold - 1e-3).any()
    result = results[0]
    assert result.anomaly_map.shape == STRIP and result.region.shape == STRIP
    assert result.anomaly_map.dtype == np.float32
    assert not result.outline.any() or (result.outline <= result.region).all()


def test_a_detector_refuses_an_unknown_product_and_a_non_detector_dir(tiny_detector, tiny_timm_dir):
    out, root = tiny_detector
    detector = AnomalyDetector.from_pretrained(out)
    with pytest.raises(ValueError, match="'bolts' is not one of this detector's: strips"):
        detector.detect(root / "strips" / "000.png", product="bolts")
    with pytest.raises(ModelLoadError, match=f"no {ANOMALY_FILE}"):
        AnomalyDetector.from_pretrained(tiny_timm_dir)


def test_several_products_train_one_bank_each_and_the_cli_picks_by_name(tmp_path, tiny_timm_dir):
    write_strips(tmp_path / "data" / "wide" / "train" / "good", 6, seed=1)  # MVTec layout
    write_strips(tmp_path / "data" / "narrow", 6, seed=2, size=(48, 96))  # a folder of images
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(tmp_path / "data", out, tiny_timm_dir)) == 0
    detector = AnomalyDetector.from_pretrained(out)
    assert detector.products == ["narrow", "wide"]
    narrow = tmp_path / "data" / "narrow" / "000.png"
    assert detector.detect(narrow, product="narrow").anomaly_map.shape == (48, 96)
    with pytest.raises(ValueError, match="2 products"):
        detector.detect(narrow)

    (tmp_path / "batch" / "deeper").mkdir(parents=True)
    shutil.copy(narrow, tmp_path / "batch" / "deeper" / "a.png")
    (tmp_path / "batch" / "broken.png").write_bytes(b"not an image")
    table = tmp_path / "scores.csv"
    argv = [str(tmp_path / "batch"), "--model", str(out), "--csv", str(table), "--no-progress"]
    with pytest.raises(SystemExit, match="2"):
        detect_cli.main(argv)  # two products and none named: refused before any image
    assert detect_cli.main([*argv, "--product", "narrow"]) == 0
    rows = {Path(row["path"]).name: row for row in csv.DictReader(table.open())}
    assert set(rows) == {"a.png", "broken.png"}
    assert rows["a.png"]["product"] == "narrow" and rows["a.png"]["anomalous"] in {"true", "false"}
    assert float(rows["a.png"]["score"]) > 0 and rows["a.png"]["error"] == ""
    assert rows["broken.png"]["score"] == "" and "broken.png" in rows["broken.png"]["error"]


# --- a drawn defect is found, with the real backbone -----------------------------------------


def test_a_defect_drawn_into_a_good_image_scores_above_threshold_where_it_is(tmp_path):
    size = (64, 256)
    write_strips(tmp_path / "good", 12, seed=3, size=size)
    out = tmp_path / "detector"
    argv = train_args(tmp_path / "good", out, "default")
    argv[argv.index("--image_size") + 1] = f"{size[0]}x{size[1]}"
    assert anomaly_train.main(argv) == 0
    detector = AnomalyDetector.from_pretrained(out)

    clean, _ = draw_steel(np.random.default_rng([3, 999]), *size, classes=())
    damaged = clean.copy()
    centre = (40, 170)  # (y, x)
    ImageDraw.Draw(damaged).ellipse((centre[1] - 7, centre[0] - 5, centre[1] + 7, centre[0] + 5), fill=(25, 25, 25))
    before, after = detector.detect_batch([clean, damaged])
    assert not before.anomalous and before.score < 1.0
    assert after.anomalous and after.score > 1.5 * before.score
    peak = np.unravel_index(np.argmax(after.anomaly_map), after.anomaly_map.shape)
    assert abs(peak[0] - centre[0]) <= 8 and abs(peak[1] - centre[1]) <= 8, peak
    assert after.region[centre] and after.area_fraction < 0.1


def test_validation_defects_add_metrics_and_figures_but_never_move_the_threshold(tmp_path, tiny_timm_dir):
    import json

    from common.checkpoint_files import ANOMALY_MAPS_PLOT, EVAL_RESULTS_FILE, ROC_PLOT, VALIDATION_SCORES_FILE
    from datagen import GENERATORS

    data = tmp_path / "anomaly-steel"
    GENERATORS["anomaly-steel"](data, seed=0, n=6, n_per_class=2, height=STRIP[0], width=STRIP[1])
    plain, validated = tmp_path / "plain", tmp_path / "validated"
    assert anomaly_train.main(train_args(data, plain, tiny_timm_dir)) == 0
    # The product folder: its validation/ split is used (test/ has 2 defective images per type, not 1).
    argv = train_args(data, validated, tiny_timm_dir, "--validation_defect_dir", str(data))
    assert anomaly_train.main(argv) == 0
    threshold = load_anomaly_config(plain).products["anomaly-steel"].threshold
    assert load_anomaly_config(validated).products["anomaly-steel"].threshold == threshold
    metrics = json.loads((validated / EVAL_RESULTS_FILE).read_text())
    for name in ("image_auroc", "pixel_auroc", "pro", "f1_at_threshold", "false_reject_rate", "f1_optimal_threshold"):
        assert np.isfinite(metrics[name]), name
    assert 0.0 <= metrics["pro"] <= 1.0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert (metrics["n_good"], metrics["n_defective"]) == (2, 4)  # validation/good and one per defect type
    for name in (ROC_PLOT, ANOMALY_MAPS_PLOT, VALIDATION_SCORES_FILE):
        assert (validated / name).is_file(), name
    assert "pixel_auroc" in (validated / MODEL_CARD_FILE).read_text()
    rows = list(csv.DictReader((validated / VALIDATION_SCORES_FILE).open()))
    assert sorted({row["kind"] for row in rows}) == ["crazing", "good", "patches", "pitting", "scratches"]
    # The reloaded detector scores the validation images as training did.
    detector = AnomalyDetector.from_pretrained(validated)
    for row in rows:
        assert detector.detect(row["path"]).score == pytest.approx(float(row["score"]), abs=1e-4), row["path"]


def test_validation_without_good_images_uses_the_out_of_fold_scores_and_says_so(tmp_path, tiny_timm_dir):
    from common.checkpoint_files import VALIDATION_SCORES_FILE
    from datagen import GENERATORS

    data = tmp_path / "anomaly-steel"
    GENERATORS["anomaly-steel"](data, seed=0, n=6, n_per_class=2, height=STRIP[0], width=STRIP[1])
    shutil.rmtree(data / "validation" / "good")
    out = tmp_path / "detector"
    argv = train_args(data, out, tiny_timm_dir, "--validation_defect_dir", str(data / "validation"))
    assert anomaly_train.main(argv) == 0
    rule = load_anomaly_config(out).products["anomaly-steel"]
    rows = list(csv.DictReader((out / VALIDATION_SCORES_FILE).open()))
    good = [row for row in rows if row["kind"].startswith("good")]
    # Every training image, labelled as scored out of fold, with the scores that fitted the threshold.
    assert {row["kind"] for row in good} == {"good (out of fold)"} and len(good) == rule.n_holdout_images == 6
    stored = sorted(score / rule.threshold for score in rule.held_out_scores)
    assert sorted(float(row["score"]) for row in good) == pytest.approx(stored, abs=1e-5)

"""What an anomaly detector's folder keeps: held-out good scores, float16 banks, and no copy of the default backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification

from common.anomaly_features import DEFAULT_PAD, PatchFeatureExtractor, default_layers
from common.anomaly_files import (
    FORMAT_VERSION,
    AnomalyModelError,
    backbone_source,
    load_anomaly_config,
    load_memory_banks,
)
from common.anomaly_threshold import false_reject_rate
from common.checkpoint_files import (
    ANOMALY_FILE,
    ANOMALY_ONNX_FILE,
    CONFIG_FILE,
    EXPORT_REPORT_FILE,
    MEMORY_BANK_FILE,
    MODEL_CARD_FILE,
    WEIGHTS_FILE,
)
from common.checkpoints import ModelLoadError, load_pretrained
from common.default_model import DEFAULT_MODEL
from pipelines.anomaly_detection import AnomalyDetector
from pipelines.fingerprints import model_fingerprint, sha256_of_files
from tests.test_anomaly_detection import STRIP, train_args, write_strips
from train.anomaly_detection import train as anomaly_train


def test_false_reject_rate_at_any_threshold_on_raw_scores():
    held_out = [2.0, 3.0, 4.0, 5.0]
    assert false_reject_rate(held_out, 5.0) == 0.0  # an image exactly at the line passes
    assert false_reject_rate(held_out, 4.5) == 0.25
    assert false_reject_rate(held_out, 2.5) == 0.75
    assert false_reject_rate(held_out, 1.0) == 1.0
    assert false_reject_rate([0.5, 1.5]) == 0.5  # normalised scores: the line is 1.0
    assert np.isnan(false_reject_rate([], 3.0))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive number"):
            false_reject_rate(held_out, bad)


@pytest.fixture(scope="module")
def strips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strips")
    write_strips(folder, 10, seed=0)
    return folder


def test_training_stores_the_held_out_scores_that_fitted_the_threshold(strips, tmp_path, tiny_timm_dir):
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir)) == 0
    rule = load_anomaly_config(out).products[strips.name]
    # Every one of the 10 images is scored out of fold (5 folds of 2).
    assert len(rule.held_out_scores) == rule.n_holdout_images == 10 and rule.folds == 5
    # The threshold is the largest of 10 scores at a 1% target: no good image is rejected, and
    # moving the line just under the second largest rejects two of ten.
    assert max(rule.held_out_scores) == pytest.approx(rule.threshold)
    assert false_reject_rate(rule.held_out_scores, rule.threshold) == rule.held_out_false_reject_rate == 0.0
    second = sorted(rule.held_out_scores)[-2]
    assert false_reject_rate(rule.held_out_scores, second * 0.999) == pytest.approx(2 / 10)
    detector = AnomalyDetector.from_pretrained(out)
    assert detector.held_out_scores() == rule.held_out_scores
    assert json.loads((out / ANOMALY_FILE).read_text())["format_version"] == FORMAT_VERSION == 3
    assert (out / WEIGHTS_FILE).is_file()  # a non-default backbone is saved as before
    # Readable by all: a container's app user must read a detector COPY'd in as root (safetensors
    # itself writes 0600).
    assert (out / MEMORY_BANK_FILE).stat().st_mode & 0o044 == 0o044
    assert (out / WEIGHTS_FILE).stat().st_mode & 0o044 == 0o044


def test_the_reflect_padding_is_stored_and_a_version_2_file_without_it_scores_unpadded(strips, tmp_path, tiny_timm_dir):
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir)) == 0
    config = load_anomaly_config(out)
    assert config.pad == DEFAULT_PAD
    padded = AnomalyDetector.from_pretrained(out)
    assert padded.describe()["pad"] == DEFAULT_PAD
    data = json.loads((out / ANOMALY_FILE).read_text())
    data["format_version"] = 2
    del data["pad"]
    (out / ANOMALY_FILE).write_text(json.dumps(data))
    unpadded = AnomalyDetector.from_pretrained(out)
    assert unpadded.config.pad == 0
    image = strips / "000.png"
    first, second = padded.detect(image), unpadded.detect(image)
    # Same map size either way (the padded cells are cropped off), but other features at the border.
    assert first.anomaly_map.shape == second.anomaly_map.shape
    assert first.score != pytest.approx(second.score, rel=1e-6)


def test_a_padded_extractor_gives_the_unpadded_grid_and_sees_the_border_reflected(tiny_timm_dir):
    def backbone():  # one each: an extractor's hooks stop the forward pass of the model they are on
        return load_pretrained(AutoModelForImageClassification, str(tiny_timm_dir)).eval()

    model = backbone()
    layers = default_layers(model)
    plain, padded = PatchFeatureExtractor(model, layers), PatchFeatureExtractor(backbone(), layers, pad=16)
    pixels = torch.randn(2, 3, 48, 96, generator=torch.Generator().manual_seed(0))
    a, b = plain(pixels), padded(pixels)
    assert a.shape == b.shape
    # The border patches see the image reflected instead of zeros (relative: the tiny untrained
    # backbone's features are about 1e-6).
    assert (a[..., 0] - b[..., 0]).abs().max() > 0.05 * a.abs().max()
    with pytest.raises(ValueError, match="pad=-1"):
        PatchFeatureExtractor(model, layers, pad=-1)
    # A pad that is not whole cells of the first layer would crop reflected pixels in or real ones out.
    with pytest.raises(ValueError, match="pad=3 is not a whole number of the first layer's cells"):
        PatchFeatureExtractor(backbone(), layers, pad=3)(pixels)


def test_training_refuses_a_part_cell_pad_and_drops_a_stale_onnx_graph(strips, tmp_path, tiny_timm_dir):
    out = tmp_path / "detector"
    with pytest.raises(SystemExit) as exited:
        anomaly_train.main(train_args(strips, out, tiny_timm_dir, "--pad", "3"))
    assert "--pad 3: pad=3 is not a whole number of the first layer's cells" in str(exited.value.code)
    assert not out.exists()  # refused before anything was written
    out.mkdir()
    (out / ANOMALY_ONNX_FILE).write_bytes(b"graph of the previous bank's features")
    (out / EXPORT_REPORT_FILE).write_text("{}")
    (out / ANOMALY_FILE).write_text("{}")
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir, "--overwrite_output_dir")) == 0
    assert not (out / ANOMALY_ONNX_FILE).exists() and not (out / EXPORT_REPORT_FILE).exists()
    assert AnomalyDetector.from_pretrained(out).runtime == "torch"


@pytest.mark.parametrize("pad", [-1, 1.5, 24, True])
def test_a_detector_file_with_an_impossible_pad_is_refused_at_load(strips, tmp_path, tiny_timm_dir, pad):
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir)) == 0
    data = json.loads((out / ANOMALY_FILE).read_text())
    data["pad"] = pad  # the strips are 48 x 192: 24 is half the smaller side
    (out / ANOMALY_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=f"pad {pad!r} must be a whole number"):
        AnomalyDetector.from_pretrained(out)


def test_a_version_1_file_without_held_out_scores_still_loads(strips, tmp_path, tiny_timm_dir):
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir)) == 0
    data = json.loads((out / ANOMALY_FILE).read_text())
    data["format_version"] = 1
    for rule in data["products"].values():
        del rule["held_out_scores"]
    (out / ANOMALY_FILE).write_text(json.dumps(data))
    detector = AnomalyDetector.from_pretrained(out)
    assert detector.held_out_scores() == [] and detector.detect(strips / "000.png").score > 0
    data["format_version"] = FORMAT_VERSION + 1
    (out / ANOMALY_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=f"format version {FORMAT_VERSION + 1}"):
        AnomalyDetector.from_pretrained(out)


def test_a_missing_non_default_backbone_is_refused_with_the_fix(strips, tmp_path, tiny_timm_dir):
    out = tmp_path / "detector"
    assert anomaly_train.main(train_args(strips, out, tiny_timm_dir)) == 0
    (out / CONFIG_FILE).unlink()
    with pytest.raises(AnomalyModelError, match="was not copied with it. Copy the whole detector folder again"):
        backbone_source(out, load_anomaly_config(out))
    with pytest.raises(ModelLoadError, match="Copy the whole detector folder again"):
        AnomalyDetector.from_pretrained(out)


def test_on_the_default_backbone_the_folder_holds_no_backbone_and_a_float16_bank(strips, tmp_path):
    full, small = tmp_path / "float32", tmp_path / "float16"
    size = ["--image_size", f"{STRIP[0]}x{STRIP[1]}"]
    assert anomaly_train.main([*train_args(strips, full, DEFAULT_MODEL), *size]) == 0
    assert anomaly_train.main([*train_args(strips, small, DEFAULT_MODEL), *size, "--memory_bank_dtype", "float16"]) == 0
    for out in (full, small):
        assert not (out / WEIGHTS_FILE).exists() and not (out / CONFIG_FILE).exists()
        assert load_anomaly_config(out).backbone == DEFAULT_MODEL
        assert backbone_source(out, load_anomaly_config(out)) == DEFAULT_MODEL
    assert "no backbone: the embedded default" in (small / MODEL_CARD_FILE).read_text()
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(small / MEMORY_BANK_FILE).values()} == {torch.float16}
    assert (small / MEMORY_BANK_FILE).stat().st_size < 0.6 * (full / MEMORY_BANK_FILE).stat().st_size
    banks = load_memory_banks(small, load_anomaly_config(small))
    assert {bank.dtype for bank in banks.values()} == {torch.float32}  # upcast once, on load

    images = sorted(strips.glob("*.png"))
    exact = AnomalyDetector.from_pretrained(full)
    halved = AnomalyDetector.from_pretrained(small)
    # The float16 bank moves the scores of the same images by well under 1% of the threshold.
    for a, b in zip(exact.detect_batch(images), halved.detect_batch(images)):
        assert abs(a.raw_score - b.raw_score) < 0.005 * a.threshold
    # The log's fingerprint covers the bank and the default backbone's weights it was loaded with.
    files = halved.weight_files()
    assert files[0] == small / MEMORY_BANK_FILE and files[1].name == WEIGHTS_FILE and files[1].parent != small
    assert model_fingerprint(halved) == sha256_of_files(files) != model_fingerprint(exact)

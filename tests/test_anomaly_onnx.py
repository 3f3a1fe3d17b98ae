"""The anomaly detector's feature extractor as ONNX: the export scores like eager, or is refused.

A detector is trained on generated good strips with the real default backbone at 64 x 256 (the
tiny random backbones give near-zero features, whose threshold of ~1e-6 would make any
normalised comparison meaningless), exported once with a clean and a damaged strip as its
check images, and then compared image by image with eager.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import ImageDraw

from common.anomaly_files import AnomalyModelError, load_anomaly_config, load_memory_banks
from common.anomaly_onnx import (
    MAX_ABS_SCORE_DIFF,
    OnnxPatchFeatureExtractor,
    export_feature_extractor,
    load_eager_extractor,
    served_extractor,
)
from common.checkpoint_files import ANOMALY_FILE, ANOMALY_ONNX_FILE, EXPORT_REPORT_FILE, MEMORY_BANK_FILE, ONNX_FILE
from common.onnx_network import OnnxExportError
from datagen.steel import draw_steel
from pipelines.anomaly_detection import AnomalyDetector
from pipelines.anomaly_detection.registry import AnomalyDetectors
from tests.test_anomaly_detection import train_args, write_strips
from train.anomaly_detection import train as anomaly_train
from train.export import anomaly as anomaly_export
from train.export.checkpoint_copy import ExportError, ParityError

pytestmark = pytest.mark.slow  # the real default backbone

SIZE = (64, 256)
DEFECT_CENTRE = (40, 170)  # (y, x)


def strip_pair():
    """A clean strip like the training ones and the same strip with a dark blob drawn in."""
    clean, _ = draw_steel(np.random.default_rng([3, 999]), *SIZE, classes=())
    damaged = clean.copy()
    y, x = DEFECT_CENTRE
    ImageDraw.Draw(damaged).ellipse((x - 7, y - 5, x + 7, y + 5), fill=(25, 25, 25))
    return clean, damaged


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(detector dir, its ONNX export dir, the export's report, check image folder)."""
    root = tmp_path_factory.mktemp("anomaly-onnx")
    write_strips(root / "good", 12, seed=3, size=SIZE)
    source = root / "detector"
    argv = train_args(root / "good", source, "default")
    argv[argv.index("--image_size") + 1] = f"{SIZE[0]}x{SIZE[1]}"
    assert anomaly_train.main(argv) == 0
    (root / "check").mkdir()
    for name, image in zip(("clean.png", "damaged.png"), strip_pair()):
        image.save(root / "check" / name)
    destination = root / "detector-onnx"
    report = anomaly_export.export_anomaly_onnx(
        source, destination, command="test", eval_dir=root / "check", latency_runs=3
    )
    return source, destination, report, root / "check"


def test_the_onnx_embedding_equals_eager_at_any_batch_and_refuses_another_size(exported):
    source, destination, _, _ = exported
    config = load_anomaly_config(source)
    eager = load_eager_extractor(source, config)
    onnx = OnnxPatchFeatureExtractor(destination / ANOMALY_ONNX_FILE)
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, *SIZE, generator=generator)
        want, got = eager(pixels), onnx(pixels)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.shape == want.shape and got.shape[0] == batch
        assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (got - want).abs().max()
        assert want.abs().max() > 1.0  # real features, so the tolerance above is a test
    with pytest.raises(ValueError, match="takes pixel_values of shape N x 3 x 64 x 256"):
        onnx(torch.zeros(1, 3, 64, 128))


def test_scores_maps_and_verdicts_match_eager_on_a_good_and_a_defective_strip(exported):
    source, destination, report, _ = exported
    config = load_anomaly_config(destination)
    banks = load_memory_banks(destination, config)
    eager = load_eager_extractor(source, config)
    onnx = served_extractor(destination, config, eager, "auto")
    assert isinstance(onnx, OnnxPatchFeatureExtractor)
    results = {}
    for name, extractor in (("torch", eager), ("onnx", onnx)):
        detector = AnomalyDetector(extractor, config, banks, str(destination))
        results[name] = detector.detect_batch(list(strip_pair()))
    for want, got in zip(results["torch"], results["onnx"]):
        assert abs(want.score - got.score) <= MAX_ABS_SCORE_DIFF
        assert np.abs(want.anomaly_map - got.anomaly_map).max() <= MAX_ABS_SCORE_DIFF
        assert want.anomalous == got.anomalous
    (clean, damaged) = results["onnx"]
    assert not clean.anomalous and damaged.anomalous  # the export still finds the defect
    # The export's own check saw the same two images: one anomalous, no verdict changed.
    assert report["exported"]["images"] == 2 and report["exported"]["anomalous_eager"] == 1
    assert report["exported"]["verdict_agreement"] == 1.0


def test_the_export_writes_the_detector_the_graph_and_a_report_with_latency(exported):
    source, destination, report, check = exported
    for name in (ANOMALY_FILE, MEMORY_BANK_FILE, ANOMALY_ONNX_FILE, EXPORT_REPORT_FILE):
        assert (destination / name).is_file(), name
    assert not (destination / ONNX_FILE).exists()  # model.onnx would read as a classifier's logits graph
    assert (destination / MEMORY_BANK_FILE).read_bytes() == (source / MEMORY_BANK_FILE).read_bytes()
    saved = json.loads((destination / EXPORT_REPORT_FILE).read_text())
    assert saved == report
    assert saved["latency_ms_eager"] > 0 and saved["latency_ms_onnx"] > 0 and saved["speedup"] > 0
    assert saved["latency_input"] == "1x3x64x256" and saved["onnx"]["input_shape"] == ["batch", 3, 64, 256]
    assert saved["exported"]["max_abs_score_diff"] <= MAX_ABS_SCORE_DIFF
    assert saved["exported"]["max_abs_map_diff"] <= MAX_ABS_SCORE_DIFF
    assert str(check) in saved["check_images"]
    # The exported folder is a detector that loads like any other.
    assert AnomalyDetector.from_pretrained(destination).detect(check / "damaged.png").anomalous


def test_the_runtime_choice_takes_the_graph_only_where_it_exists(exported):
    source, destination, _, _ = exported
    config = load_anomaly_config(source)
    eager = load_eager_extractor(source, config)
    assert served_extractor(destination, config, eager, "torch") is eager
    assert served_extractor(source, config, eager, "auto") is eager
    with pytest.raises(AnomalyModelError, match=f"no {ANOMALY_ONNX_FILE} for runtime 'onnx'.*train.export"):
        served_extractor(source, config, eager, "onnx")
    narrower = dataclasses.replace(config, input_size=[64, 128])
    with pytest.raises(AnomalyModelError, match="takes N x 3 x 64 x 256, but the detector's input size is 64 x 128"):
        served_extractor(destination, narrower, eager, "auto")


def test_a_damaged_graph_is_served_by_pytorch_on_auto_and_refused_on_onnx(exported, tmp_path, caplog):
    source, _, _, _ = exported
    config = load_anomaly_config(source)
    eager = load_eager_extractor(source, config)
    (tmp_path / ANOMALY_ONNX_FILE).write_bytes(b"not a graph")
    with caplog.at_level("WARNING", logger="vispect.anomaly_onnx"):
        assert served_extractor(tmp_path, config, eager, "auto") is eager
    assert "ONNX Runtime cannot load" in caplog.text and "serving the anomaly detector with PyTorch" in caplog.text
    with pytest.raises(OnnxExportError, match="ONNX Runtime cannot load"):
        served_extractor(tmp_path, config, eager, "onnx")


def test_another_models_graph_is_refused_and_nothing_is_written(exported, tmp_path, monkeypatch):
    source, _, _, check = exported
    config = load_anomaly_config(source)
    other = load_eager_extractor(source, config)
    with torch.no_grad():
        for parameter in other.backbone.parameters():
            parameter.mul_(1.05)  # another backbone's weights: the same shapes, other features
    wrong = export_feature_extractor(other, config.input_size, tmp_path / "other.onnx")

    def export_the_other(_extractor, _size, path):
        shutil.copyfile(wrong, path)
        return path

    monkeypatch.setattr(anomaly_export, "export_feature_extractor", export_the_other)
    destination = tmp_path / "refused"
    with pytest.raises(ParityError, match="The ONNX feature extractor is refused: its normalised image scores differ"):
        anomaly_export.export_anomaly_onnx(source, destination, eval_dir=check, latency_runs=1)
    assert not destination.exists()
    assert list(tmp_path.glob(".refused.*")) == []  # the staging folder is gone too


def test_a_folder_that_is_not_a_detector_is_refused(tiny_timm_dir, tmp_path):
    with pytest.raises(ExportError, match=f"has no {ANOMALY_FILE}, so it is not an anomaly detector"):
        anomaly_export.export_anomaly_onnx(tiny_timm_dir, tmp_path / "out")


def test_the_export_command_line_takes_a_detector_and_the_app_serves_its_graph(exported, tmp_path, capsys):
    from train.export.cli import main as export_main

    source, _, _, check = exported
    with pytest.raises(SystemExit):
        export_main([str(source), str(tmp_path / "int8"), "--format", "onnx", "--quantize", "int8"])
    assert "not available for an anomaly detector" in capsys.readouterr().err
    out = tmp_path / "exported"
    argv = [str(source), str(out), "--format", "onnx", "--eval_dir", str(check), "--latency_runs", "2"]
    assert export_main(argv) == 0
    assert f"wrote {out}: {ANOMALY_ONNX_FILE} (float32)" in capsys.readouterr().out
    served = AnomalyDetector.from_pretrained(out)  # "auto": the graph where there is one
    eager = AnomalyDetector.from_pretrained(out, runtime="torch")
    assert (served.runtime, eager.runtime) == ("onnx", "torch")
    # The app's detectors follow its --runtime like its other models.
    for runtime, expected in (("auto", "onnx"), ("torch", "torch")):
        offered = AnomalyDetectors.from_sources([out], models_dir=None, runtime=runtime)
        assert offered.get(str(out)).runtime == expected
    with pytest.raises(ValueError, match="runtime must be one of"):
        AnomalyDetectors.from_sources([out], models_dir=None, runtime="gpu")
    assert out / ANOMALY_ONNX_FILE in served.weight_files()  # the graph decides its scores, so it is fingerprinted
    clean, damaged = strip_pair()
    for image in (clean, damaged):
        a, b = served.detect(image), eager.detect(image)
        assert abs(a.score - b.score) <= MAX_ABS_SCORE_DIFF and a.anomalous == b.anomalous

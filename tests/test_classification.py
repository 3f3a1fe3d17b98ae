"""The classification pipeline on tiny random checkpoints, through the real loading code."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoints import ModelLoadError, resolve_checkpoint
from common.image_io import ImageLoadError
from pipelines.classification import ImageClassifier
from pipelines.classification.cli import main
from tests.conftest import TINY_LABELS


def _favour_class(model, index: int) -> None:
    """Make the head answer ``index`` whatever the image: a behaviour we can assert on."""
    head = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[index] = 5.0


def _favouring_checkpoint(source, directory, index: int, runtime: str):
    """``source`` saved again with its head favouring ``index``, exported to ONNX for that runtime."""
    from tests.conftest import export_onnx_copy

    classifier = ImageClassifier.from_pretrained(source, runtime="torch")
    _favour_class(classifier.model, index)
    saved = directory / "favoured"
    classifier.model.save_pretrained(saved)
    classifier.processor.save_pretrained(saved)
    return export_onnx_copy(saved, directory / "exported") if runtime == "onnx" else saved


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("fixture", ["tiny_vit_dir", "tiny_resnet_dir"])
def test_labels_come_from_the_checkpoint(fixture, runtime, request, photo_file, tmp_path):
    checkpoint = _favouring_checkpoint(request.getfixturevalue(fixture), tmp_path, 2, runtime)
    classifier = ImageClassifier.from_pretrained(checkpoint, runtime=runtime)
    assert classifier.runtime == runtime
    result = classifier.classify(photo_file, top_k=3)
    predictions = result.predictions
    assert not result.unknown and result.open_set_score is None  # no calibration.json: no rejection rule
    assert [p.label for p in predictions][0] == TINY_LABELS[2] == predictions[0].label
    assert predictions[0].index == 2
    assert predictions[0].score == pytest.approx(np.exp(5) / (np.exp(5) + 2), rel=1e-5)
    assert [p.score for p in predictions] == sorted((p.score for p in predictions), reverse=True)
    assert sum(p.score for p in predictions) == pytest.approx(1.0, rel=1e-5)


def test_top_k_is_clamped_to_the_number_of_classes(tiny_vit_dir, photo_file):
    classifier = ImageClassifier.from_pretrained(tiny_vit_dir)
    assert len(classifier.classify(photo_file, top_k=50).predictions) == len(TINY_LABELS)
    assert len(classifier.classify(photo_file, top_k=0).predictions) == 1


@pytest.mark.parametrize("fixture", ["tiny_resnet_dir", "tiny_resnet_onnx_dir"], ids=["torch", "onnx"])
def test_batch_gives_the_same_answer_as_one_by_one(fixture, request):
    classifier = ImageClassifier.from_pretrained(request.getfixturevalue(fixture))
    assert classifier.runtime == ("onnx" if "onnx" in fixture else "torch")  # auto: ONNX when exported
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    batch = classifier.classify_batch(images, top_k=3)
    for image, expected in zip(images, [result.predictions for result in batch]):
        single = classifier.classify(image, top_k=3).predictions
        assert [p.index for p in single] == [p.index for p in expected]
        assert [p.score for p in single] == pytest.approx([p.score for p in expected], abs=1e-5)


def test_preprocessing_comes_from_the_checkpoint(tiny_resnet_dir, tiny_vit_dir):
    resnet = ImageClassifier.from_pretrained(tiny_resnet_dir).describe()
    vit = ImageClassifier.from_pretrained(tiny_vit_dir).describe()
    assert resnet.input_size == (32, 32) and resnet.model_type == "resnet"
    assert vit.input_size == (32, 32) and vit.mean == (0.5, 0.5, 0.5)
    assert vit.num_labels == 3 and vit.parameters > 0


def test_unreadable_image_gets_the_loader_error(tiny_vit_dir, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.jpg"):
        ImageClassifier.from_pretrained(tiny_vit_dir).classify(bad)


def test_saved_metrics_are_reported(tiny_vit_dir, tmp_path):
    import shutil

    checkpoint = shutil.copytree(tiny_vit_dir, tmp_path / "with-metrics")
    (checkpoint / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.91, "epoch": 3.0}))
    (checkpoint / "test_results.json").write_text("{broken")
    info = ImageClassifier.from_pretrained(checkpoint).describe()
    assert info.metrics == {"eval_accuracy": 0.91, "epoch": 3.0}


def test_a_file_is_not_a_checkpoint(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="checkpoint directory"):
        resolve_checkpoint(weights)


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_checkpoint(tmp_path)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_uncached_hub_id_offline_fails_with_a_fix():
    # conftest sets HF_HUB_OFFLINE=1: the loader must stop at the local cache, not retry online.
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the Hub is offline.*directory"):
        ImageClassifier.from_pretrained("someone/no-such-model-xyz")


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_cli_writes_csv_and_reports_unreadable_files(runtime, tiny_vit_onnx_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    Image.new("L", (30, 40), 128).save(folder / "sub" / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "predictions.csv"
    options = ["--runtime", runtime, "--top-k", "2", "--csv", str(out)]
    assert main([str(folder), "--model", str(tiny_vit_onnx_dir), *options]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "broken.jpg", "b.jpg"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 2 and all(r["label_1"] in TINY_LABELS.values() for r in good)
    assert all(0 < float(r["score_2"]) <= float(r["score_1"]) <= 1 for r in good)
    broken = next(r for r in rows if r["path"].endswith("broken.jpg"))
    assert "broken.jpg" in broken["error"] and broken["label_1"] == ""
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "classified 2 image(s), skipped 1" in err


def test_cli_refuses_onnx_for_a_checkpoint_without_an_export(tiny_vit_dir, photo_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(photo_file), "--model", str(tiny_vit_dir), "--runtime", "onnx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "has no model.onnx" in err and f"python -m train.export {tiny_vit_dir} OUT --format onnx" in err


def test_cli_refuses_missing_paths(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope.jpg")])
    assert exit_info.value.code == 2
    assert "no such file or folder" in capsys.readouterr().err

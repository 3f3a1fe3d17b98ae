"""The embedded demo models under models/: small, documented, served by default, and good on new data."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.default_model import cache_root
from common.segmentation_scores import segmentation_metrics
from datagen.parts import OTHER_KINDS, PART_KINDS, draw_other, draw_part
from datagen.steel import write_steel
from pipelines.classification import ImageClassifier
from pipelines.registry import PROJECT_MODELS_DIR, ClassifierRegistry, LazySegmenter
from pipelines.segmentation import DefectSegmenter
from train.segmentation import data as seg

SEGMENTER = PROJECT_MODELS_DIR / "steel-segformer"
STAGE1 = PROJECT_MODELS_DIR / "steel-stage1"
PARTS = PROJECT_MODELS_DIR / "parts"
PARTS_BUDGET_BYTES = 8 * 2**20
MAX_TOTAL_BYTES = 25 * 2**20
# Steel images drawn with a seed that neither training (seed 0) nor the benchmark (seed 1) uses.
FRESH_SEED = 20261122
FRESH_N = 24
# Floors under what the committed pair scores on these 24 images (0.964, 0.928 and 0.752 when
# the models were committed); the 100-image held-out figures behind the goals (0.90 and
# 0.70) are in models/steel-segformer/README.md and come from bench/segmentation.py.
MIN_MEAN_DICE = 0.90
MIN_DEFECTIVE_IMAGE_DICE = 0.85
MIN_PRESENT_DEFECT_DICE = 0.65  # an all-empty answer scores 0 here


@pytest.mark.parametrize("directory", [SEGMENTER, STAGE1, PARTS], ids=["segmenter", "stage1", "parts"])
def test_demo_model_is_float16_safetensors_with_a_reproducible_card(directory):
    weights = load_file(directory / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    card = (directory / "README.md").read_text()
    assert "python -m train." in card  # the training command
    assert "python -m train.export" in card  # and how the shipped weights were made
    assert not list(directory.glob("*.bin")) and not list(directory.glob("*.pt*"))  # nothing pickled


def test_demo_models_fit_the_size_budget():
    total = sum(path.stat().st_size for d in (SEGMENTER, STAGE1) for path in d.rglob("*") if path.is_file())
    assert total <= MAX_TOTAL_BYTES


@functools.cache
def _demo_pair(runtime: str) -> DefectSegmenter:
    """The two-stage demo pair as the app serves it, by ``runtime``; loaded once per test session."""
    return DefectSegmenter.from_pretrained(SEGMENTER, stage1=STAGE1, tile_width=512, runtime=runtime)


def test_app_serves_the_demo_pair_by_default():
    source = LazySegmenter.from_models_dir()
    assert Path(source.model_dir) == SEGMENTER and Path(source.stage1_dir) == STAGE1
    assert set(source.labels().values()) == {"background", "pitting", "crazing", "scratches", "patches"}
    served = source.get()
    assert served.min_area_key == "min_area_two_stage"  # the minimums fitted together with stage 1
    assert served.runtime == "onnx" and served.stage1.runtime == "onnx"  # exported once into the cache


def test_the_demo_pair_is_exported_into_the_cache_and_checked_never_into_models():
    segmenter = _demo_pair("onnx")
    for served, checkpoint in ((segmenter, SEGMENTER), (segmenter.stage1, STAGE1)):
        folder = served.network.path.parent
        assert folder.parent == cache_root() / "onnx" and folder.name.startswith(f"{checkpoint.name}-")
    # models/ is in git and stays as committed: nothing is exported into it. The one graph there is
    # the demo anomaly detector's, committed with it (1.1 MB; exported by train.export, see its card).
    shipped = {PROJECT_MODELS_DIR / "steel-anomaly" / name for name in ("anomaly_features.onnx", "export_report.json")}
    assert {*PROJECT_MODELS_DIR.rglob("*.onnx"), *PROJECT_MODELS_DIR.rglob("export_report.json")} == shipped
    report = segmenter.export_report
    assert report["pixel_agreement"] >= 0.999 and report["defect_pixel_agreement"] == 1.0
    assert report["dynamic_axes"] == "batch, height, width" and segmenter.network.input_shape == (None, 3, None, None)
    stage1 = segmenter.stage1.export_report
    assert stage1["max_abs_logit_diff"] <= 1e-3 and stage1["top1_agreement"] == 1.0


@pytest.fixture(scope="module")
def fresh_steel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fresh-steel")
    write_steel(folder, n=FRESH_N, seed=FRESH_SEED)
    data = seg.load_kaggle(folder).splits["train"].with_format(None)
    images = [seg.image_source(example) for example in data]
    truth = np.stack([seg.decode_mask(example) for example in data])
    return images, truth


@pytest.fixture(scope="module")
def fresh_predictions(fresh_steel):
    """Label maps of the fresh images by runtime, computed on first use."""
    images, _ = fresh_steel

    @functools.cache
    def predict(runtime):
        return np.stack([_demo_pair(runtime).segment(path).label_map for path in images])

    return predict


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_two_stage_demo_pair_reaches_the_dice_floor_on_fresh_images(fresh_steel, fresh_predictions, runtime):
    _, truth = fresh_steel
    segmenter = _demo_pair(runtime)
    assert segmenter.runtime == runtime
    predicted = fresh_predictions(runtime)
    scores = segmentation_metrics(predicted, truth, segmenter.id2label)
    empty = segmentation_metrics(np.zeros_like(truth), truth, segmenter.id2label)
    report = json.dumps({k: round(v, 3) for k, v in scores.items()})
    assert scores["mean_dice"] >= MIN_MEAN_DICE, report
    assert scores["mean_dice"] > empty["mean_dice"] + 0.03, report  # clearly better than answering "no defects"
    assert scores["mean_dice_defective_images"] >= MIN_DEFECTIVE_IMAGE_DICE, report
    assert scores["mean_dice_present_defects"] >= MIN_PRESENT_DEFECT_DICE, report


def test_both_runtimes_outline_the_fresh_images_alike(fresh_predictions):
    eager, exported = fresh_predictions("torch"), fresh_predictions("onnx")
    assert np.mean(eager == exported) >= 0.999
    assert np.mean(exported[eager > 0] == eager[eager > 0]) >= 0.999  # the defects, not just the background


# The parts model's held-out figures (its card: accuracy 97.2%, parts accepted 91.1%, other images
# "unknown" 79.0%) were 98.3%, 90% and 75% on these freshly drawn images; the floors sit under them.
PARTS_SEED = 20261202
PARTS_PER_CLASS = 10
MIN_PARTS_ACCURACY = 0.93
MIN_PARTS_ACCEPTED = 0.8
MIN_OTHER_REJECTED = 0.7


def test_parts_model_fits_its_budget_and_is_offered_everywhere():
    assert sum(path.stat().st_size for path in PARTS.rglob("*") if path.is_file()) <= PARTS_BUDGET_BYTES
    registry = ClassifierRegistry.from_sources()
    assert str(PARTS) in [choice.source for choice in registry.choices]
    assert set(registry.get(str(PARTS)).id2label.values()) == set(PART_KINDS)


@pytest.fixture(scope="module")
def fresh_parts():
    rng = np.random.default_rng(PARTS_SEED)
    parts = [(kind, draw_part(kind, rng, 128)[0]) for kind in PART_KINDS for _ in range(PARTS_PER_CLASS)]
    others = [(kind, draw_other(kind, rng, 128)) for kind in OTHER_KINDS for _ in range(PARTS_PER_CLASS)]
    return parts, others


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_parts_model_names_fresh_parts_and_rejects_other_images(fresh_parts, runtime):
    parts, others = fresh_parts
    classifier = ImageClassifier.from_pretrained(PARTS, runtime=runtime)
    assert classifier.runtime == runtime
    answers = classifier.classify_batch([image for _, image in parts], top_k=1)
    accuracy = np.mean([result.predictions[0].label == kind for (kind, _), result in zip(parts, answers)])
    accepted = np.mean([not result.unknown for result in answers])
    rejected = {kind: 0 for kind in OTHER_KINDS}
    for (kind, _), result in zip(others, classifier.classify_batch([image for _, image in others], top_k=1)):
        rejected[kind] += result.unknown
    other_rejected = sum(rejected.values()) / len(others)
    report = f"accuracy {accuracy:.3f}, parts accepted {accepted:.3f}, other rejected by kind {rejected}"
    assert accuracy >= MIN_PARTS_ACCURACY, report
    assert accepted >= MIN_PARTS_ACCEPTED, report
    assert other_rejected >= MIN_OTHER_REJECTED, report

"""The embedded demo models under models/: small, documented, served by default, and good on new data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.segmentation_scores import segmentation_metrics
from datagen.steel import write_steel
from pipelines.registry import PROJECT_MODELS_DIR, LazySegmenter
from pipelines.segmentation import DefectSegmenter
from train.segmentation import data as seg

SEGMENTER = PROJECT_MODELS_DIR / "steel-segformer"
STAGE1 = PROJECT_MODELS_DIR / "steel-stage1"
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


@pytest.mark.parametrize("directory", [SEGMENTER, STAGE1], ids=["segmenter", "stage1"])
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


def test_app_serves_the_demo_pair_by_default():
    source = LazySegmenter.from_models_dir()
    assert Path(source.model_dir) == SEGMENTER and Path(source.stage1_dir) == STAGE1
    assert set(source.labels().values()) == {"background", "pitting", "crazing", "scratches", "patches"}
    assert source.get().min_area_key == "min_area_two_stage"  # the minimums fitted together with stage 1


@pytest.fixture(scope="module")
def fresh_steel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fresh-steel")
    write_steel(folder, n=FRESH_N, seed=FRESH_SEED)
    data = seg.load_kaggle(folder).splits["train"].with_format(None)
    images = [seg.image_source(example) for example in data]
    truth = np.stack([seg.decode_mask(example) for example in data])
    return images, truth


def test_two_stage_demo_pair_reaches_the_dice_floor_on_fresh_images(fresh_steel):
    images, truth = fresh_steel
    segmenter = DefectSegmenter.from_pretrained(SEGMENTER, stage1=STAGE1, tile_width=512)
    predicted = np.stack([segmenter.segment(path).label_map for path in images])
    scores = segmentation_metrics(predicted, truth, segmenter.id2label)
    empty = segmentation_metrics(np.zeros_like(truth), truth, segmenter.id2label)
    report = json.dumps({k: round(v, 3) for k, v in scores.items()})
    assert scores["mean_dice"] >= MIN_MEAN_DICE, report
    assert scores["mean_dice"] > empty["mean_dice"] + 0.03, report  # clearly better than answering "no defects"
    assert scores["mean_dice_defective_images"] >= MIN_DEFECTIVE_IMAGE_DICE, report
    assert scores["mean_dice_present_defects"] >= MIN_PRESENT_DEFECT_DICE, report

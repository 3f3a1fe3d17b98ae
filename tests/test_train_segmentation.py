"""Segmentation training, stage-1 data and Severstal scoring on tiny models and generated steel."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from common.segmentation_scores import IGNORE_INDEX, dice_per_pair, segmentation_metrics
from datagen.steel import write_steel
from pipelines.segmentation import DefectSegmenter
from tests.conftest import save_tiny_stage1
from train.segmentation import train as train_seg
from train.segmentation.postprocessing import clear_ruled_out
from train.segmentation.presence_labels import main as presence_main

ID2LABEL = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}


@pytest.fixture(scope="module")
def steel(tmp_path_factory):
    out = tmp_path_factory.mktemp("steel")
    write_steel(out, n=30, seed=5, height=64, width=320)
    return out


@pytest.fixture(scope="module")
def tiny_segformer_dir(tmp_path_factory):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from tests.conftest import tiny_segformer_config

    torch.manual_seed(0)
    config = tiny_segformer_config(ID2LABEL)
    directory = tmp_path_factory.mktemp("tiny-segformer")
    SegformerForSemanticSegmentation(config).save_pretrained(directory)
    SegformerImageProcessor(do_resize=False).save_pretrained(directory)
    return directory


def test_severstal_dice_counts_empty_pairs_as_perfect():
    truth = np.zeros((2, 4, 4), dtype=np.uint8)
    truth[0, :2, :2] = 3  # image 0 has 4 pixels of class 3
    predicted = np.zeros_like(truth)
    predicted[0, :2, :1] = 3  # 2 of them found, nothing else predicted
    dice = dice_per_pair(predicted, truth, num_classes=5)
    assert dice[0, 2] == pytest.approx(2 * 2 / (2 + 4))
    assert (np.delete(dice, 2, axis=1) == 1).all() and dice[1, 2] == 1
    metrics = segmentation_metrics(predicted, truth, ID2LABEL)
    assert metrics["mean_dice"] == pytest.approx((7 + 2 / 3) / 8)
    assert metrics["mean_dice_defective_images"] == pytest.approx((3 + 2 / 3) / 4)
    assert metrics["mean_dice_present_defects"] == pytest.approx(2 / 3)  # the one pair with a defect
    assert segmentation_metrics(np.zeros_like(truth), truth, ID2LABEL)["mean_dice_present_defects"] == 0


def test_ignored_pixels_are_not_scored():
    truth = np.full((1, 2, 2), IGNORE_INDEX, dtype=np.uint8)
    truth[0, 0, 0] = 1
    predicted = np.ones_like(truth)
    assert segmentation_metrics(predicted, truth, ID2LABEL)["dice_pitting"] == 1.0


def test_smoke_training_gives_a_checkpoint_the_pipeline_loads(steel, tiny_segformer_dir, tmp_path):
    out = tmp_path / "seg"
    metrics = train_seg.main([
        "--data_dir", str(steel), "--model_name_or_path", str(tiny_segformer_dir), "--output_dir", str(out),
        "--max_steps", "2", "--crop_size", "64x128", "--resize_to", "32x160", "--per_device_train_batch_size", "4",
        "--eval_strategy", "steps", "--eval_steps", "2", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert 0 <= metrics["eval_mean_dice"] <= 1 and "eval_dice_scratches" in metrics
    for name in ("model.safetensors", "eval_results.json", "predictions.png", "training_curves.png", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by a container's app user
    config = json.loads((out / "config.json").read_text())
    assert config["inference_resize"] == [32, 160]
    assert set(config["min_area"]) == {"pitting", "crazing", "scratches", "patches"}  # fitted on validation
    assert 0 <= metrics["eval_mean_dice_with_min_area"] <= 1
    card = (out / "README.md").read_text()
    assert "image-segmentation" in card and "## Post-processing" in card
    assert f"- pitting: {config['min_area']['pitting']} px" in card
    segmenter = DefectSegmenter.from_pretrained(out)
    assert segmenter.resize_to == (32, 160)
    assert segmenter.tuned_min_area == config["min_area"]

    from train.segmentation.tune_min_area import main as tune_main

    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "min_area"}))
    assert tune_main([str(out), "--data_dir", str(steel), "--seed", "42", "--resize_to", "32x160"]) == 0
    assert json.loads((out / "config.json").read_text())["min_area"] == config["min_area"]  # same split, same fit
    card = (out / "README.md").read_text()
    assert card.count("## Post-processing") == 1 and "python -m train.segmentation.tune_min_area" in card

    # Stage 1 says patches are absent (sigmoid(-20)) and the rest present: the two-stage set is fitted too.
    stage1 = save_tiny_stage1(tmp_path / "stage1", ["patches", "pitting", "crazing", "scratches"], [-20, 5, 5, 5])
    args = [str(out), "--data_dir", str(steel), "--seed", "42", "--resize_to", "32x160", "--stage1", str(stage1)]
    assert tune_main(args) == 0
    tuned = json.loads((out / "config.json").read_text())
    assert tuned["min_area"] == config["min_area"]
    assert set(tuned["min_area_two_stage"]) == {"pitting", "crazing", "scratches", "patches"}
    assert "min_area_two_stage" in (out / "README.md").read_text()
    assert DefectSegmenter.from_pretrained(out, stage1=stage1).tuned_min_area == tuned["min_area_two_stage"]
    assert tune_main(args[:-2]) == 0  # refit without stage 1: the two-stage set stays, and the card says so
    assert json.loads((out / "config.json").read_text())["min_area_two_stage"] == tuned["min_area_two_stage"]
    assert "kept from an earlier fit" in (out / "README.md").read_text()
    wrong = save_tiny_stage1(tmp_path / "wrong", ["patches", "pitting", "crazing", "dents"], [0, 0, 0, 0])
    with pytest.raises(SystemExit) as refused:
        tune_main([*args[:-1], str(wrong)])
    assert refused.value.code == 2
    from PIL import Image

    result = segmenter.segment(Image.new("RGB", (320, 64), (120, 120, 120)))
    assert result.label_map.shape == (64, 320)
    assert [region.label for region in result.regions] == ["pitting", "crazing", "scratches", "patches"]


def test_fine_tuning_drops_the_minimum_areas_fitted_for_the_old_weights(tiny_segformer_dir, tmp_path):
    import shutil

    start = shutil.copytree(tiny_segformer_dir, tmp_path / "start")
    config = json.loads((start / "config.json").read_text())
    config.update(min_area={"pitting": 50}, min_area_two_stage={"pitting": 0})
    (start / "config.json").write_text(json.dumps(config))
    model, _ = train_seg.build_model(str(start), ID2LABEL)
    assert not hasattr(model.config, "min_area") and not hasattr(model.config, "min_area_two_stage")


def test_clear_ruled_out_removes_a_class_only_where_stage1_says_absent():
    predicted = np.array([[[1, 2], [2, 0]], [[1, 2], [0, 0]]], dtype=np.uint8)
    present = np.array([[True, False], [True, True]])  # class 2 absent in image 0 only
    cleared = clear_ruled_out(predicted, present)
    assert cleared.tolist() == [[[1, 0], [0, 0]], [[1, 2], [0, 0]]]
    assert predicted[0, 0, 1] == 2  # the input is left as it was


def test_soft_dice_is_zero_for_a_perfect_answer():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    logits = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float() * 50
    assert train_seg.soft_dice_loss(logits, labels).item() == pytest.approx(0, abs=1e-3)


def test_soft_dice_leaves_classes_absent_from_the_batch_to_cross_entropy():
    labels = torch.tensor([[[0, 1], [0, 1]]])  # only class 1 present, in the right column
    answer = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float() * 20
    spurious = answer.clone()
    spurious[0, 2, :, 0] = 20  # class 2, absent from the batch, shares the background pixels
    # Dice scores class 1 alone, which both answers get right; class 2 is cross-entropy's job.
    assert train_seg.soft_dice_loss(spurious, labels).item() == pytest.approx(
        train_seg.soft_dice_loss(answer, labels).item(), abs=1e-4
    )
    clean = torch.zeros(1, 2, 2, dtype=torch.long)
    assert train_seg.soft_dice_loss(torch.randn(1, 5, 2, 2), clean).item() == 0.0


def _strip_with_one_small_defect():
    from torchvision import tv_tensors

    mask = torch.zeros(256, 1600, dtype=torch.uint8)
    mask[100:104, 1500:1510] = 2  # 40 pixels at the far right end of the strip
    mask[:, :8] = IGNORE_INDEX
    return tv_tensors.Image(torch.zeros(3, 256, 1600, dtype=torch.uint8)), tv_tensors.Mask(mask)


def test_defect_biased_crop_holds_the_defect_when_asked_to():
    torch.manual_seed(0)
    image, mask = _strip_with_one_small_defect()
    always = train_seg.DefectBiasedCrop((128, 384), p=1.0)
    never = train_seg.DefectBiasedCrop((128, 384), p=0.0)
    crops = [always(image, mask) for _ in range(100)]
    assert all((m == 2).any() for _, m in crops)
    assert all(i.shape == (3, 128, 384) and m.shape == (128, 384) for i, m in crops)
    # A plain random crop finds this defect only about a quarter of the time.
    assert sum(bool((never(image, mask)[1] == 2).any()) for _ in range(100)) < 50


def test_defect_biased_crop_keeps_image_and_mask_aligned():
    torch.manual_seed(1)
    image, mask = _strip_with_one_small_defect()
    image = type(image)((mask == 2).to(torch.uint8).expand(3, -1, -1) * 200)  # the defect drawn in the image
    for _ in range(20):
        cropped_image, cropped_mask = train_seg.DefectBiasedCrop((64, 256), p=1.0)(image, mask)
        assert torch.equal(cropped_image[0] == 200, cropped_mask == 2)


def test_balanced_weights_give_clean_images_and_each_class_equal_mass():
    # 6 clean, 3 with scratches (class index 2), 1 with crazing + scratches (rarest: crazing).
    defects = [[False] * 4] * 6 + [[False, False, True, False]] * 3 + [[False, True, True, False]]
    weights = train_seg.balanced_image_weights(defects)
    clean, scratches, crazing = sum(weights[:6]), sum(weights[6:9]), weights[9]
    assert clean == pytest.approx(scratches) == pytest.approx(crazing)
    assert weights[9] > weights[6] > weights[0]


def test_bad_flags_are_named(tmp_path):
    with pytest.raises(ValueError, match="exactly one data source"):
        train_seg.parse_args(["--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--crop_size must be HEIGHTxWIDTH in multiples of 32"):
        train_seg.parse_args(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path), "--crop_size", "100x100"])
    with pytest.raises(ValueError, match="--defect_crop_probability must be in"):
        train_seg.parse_args(
            ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path), "--defect_crop_probability", "2"]
        )


def test_stage1_csvs_follow_the_segmenter_split(steel, tmp_path):
    assert presence_main(["--data_dir", str(steel), "--out", str(tmp_path), "--seed", "0"]) == 0
    rows = {name: list(csv.DictReader((tmp_path / f"{name}.csv").open())) for name in ("train", "validation")}
    assert len(rows["train"]) + len(rows["validation"]) == 30
    assert not {r["path"] for r in rows["train"]} & {r["path"] for r in rows["validation"]}
    labels = {label for r in rows["train"] for label in r["label"].split(";") if label}
    assert labels <= set(ID2LABEL.values()) - {"background"}
    assert any(r["label"] == "" for r in rows["train"])  # clean images stay, with no label
    from train.segmentation.data import load_kaggle

    truth = {row["image_id"]: row["defects"] for row in load_kaggle(steel).splits["train"]}
    for row in rows["train"]:
        expected = {ID2LABEL[i + 1] for i, flag in enumerate(truth[row["path"].rsplit("/", 1)[-1]]) if flag}
        assert set(filter(None, row["label"].split(";"))) == expected

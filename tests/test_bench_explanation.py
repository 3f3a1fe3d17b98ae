"""The explanation benchmark: its summaries of constructed records, its localisation path on tiny random models.

The localisation measures themselves live in ``pipelines.explanation`` and are tested in test_explanation.py.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench import explanation as bench
from bench.explanation import (
    by_object_size,
    class_index,
    compare_localisation,
    localisation_summary,
    measure_localisation,
    parse_setting,
    select_test_images,
    setting_name,
    view_mask,
)
from datagen.parts import PART_KINDS, write_parts
from tests.conftest import tiny_vit_config

PART_LABELS = dict(enumerate(PART_KINDS))


# ---------------------------------------------------------------------------------------------
# Summaries of constructed records


def _record(cls, energy, area, hit, correct=True, flat=False):
    return {
        "class": cls,
        "energy_share": energy,
        "energy_near_object": min(1.0, energy + 0.1),
        "mask_area_share": area,
        "mask_share_of_view": area * 1.2,
        "resolution_ceiling": 0.8,
        "pointing_hit": hit,
        "correct": correct,
        "flat": flat,
    }


def test_summary_gives_mean_median_hit_rate_and_accuracy():
    records = [
        _record("gear", 0.9, 0.2, True),
        _record("gear", 0.6, 0.2, True, correct=False),
        _record("gear", 0.0, 0.1, False, flat=True),
        _record("gear", 0.5, 0.1, False),
    ]
    summary = localisation_summary(records)
    assert summary["n"] == 4
    assert summary["energy_share"] == {"mean": 0.5, "median": 0.55}
    assert summary["energy_near_object"] == {"mean": 0.6, "median": 0.65}
    assert summary["mask_area_share"] == {"mean": 0.15, "median": 0.15}
    assert summary["resolution_ceiling"] == {"mean": 0.8, "median": 0.8}
    assert summary["energy_over_area"] == pytest.approx((4.5 + 3.0 + 0.0 + 5.0) / 4, abs=1e-3)
    assert summary["pointing_game_hit_rate"] == 0.5
    assert summary["accuracy"] == 0.75
    assert summary["flat_heatmaps"] == 1
    with pytest.raises(ValueError, match="at least one"):
        localisation_summary([])


def test_object_size_rows_split_images_by_mask_share():
    records = [
        _record("spring", 0.2, 0.03, False),
        _record("bolt", 0.4, 0.04, True),
        _record("gear", 0.6, 0.12, True),
        _record("washer", 0.8, 0.2, True),  # a bin's upper bound is exclusive
    ]
    rows = by_object_size(records, bins=((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 1.0)))
    assert [row["n"] for row in rows] == [2, 0, 1, 1]
    assert rows[0]["energy_share_mean"] == pytest.approx(0.3) and rows[0]["chance_mean"] == pytest.approx(0.035)
    assert rows[0]["energy_near_object_mean"] == pytest.approx(0.4) and rows[0]["pointing_game_hit_rate"] == 0.5
    assert rows[1]["energy_share_mean"] is None  # an empty bin keeps its row
    assert rows[3]["mask_area_share"] == "0.2-1" and rows[3]["energy_share_mean"] == pytest.approx(0.8)


def test_settings_name_a_method_and_optionally_a_layer():
    assert parse_setting("layercam@timm_model.blocks.4") == ("layercam", "timm_model.blocks.4", False)
    assert parse_setting("GradCAM++") == ("gradcam++", None, False)
    assert parse_setting("guided-layercam@timm_model.blocks.4") == ("layercam", "timm_model.blocks.4", True)
    for text in ("guided-layercam@timm_model.blocks.4", "gradcam++"):
        assert setting_name(*parse_setting(text)) == text
    with pytest.raises(argparse.ArgumentTypeError, match="unknown CAM method 'gradcum'.*choose from gradcam"):
        parse_setting("gradcum@layer1")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown CAM method 'guided'"):
        parse_setting("guided@layer1")
    with pytest.raises(argparse.ArgumentTypeError, match="names no layer after '@'"):
        parse_setting("layercam@")


# ---------------------------------------------------------------------------------------------
# Choosing images and classes


def test_test_images_are_taken_from_the_classes_in_turn(tmp_path):
    for name, count in (("bolt", 3), ("gear", 1), ("spring", 2)):
        folder = tmp_path / "test" / name
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{name}_{i:04d}.png").write_bytes(b"")
    (tmp_path / "test" / "gear" / "notes.txt").write_text("not an image")
    chosen = select_test_images(tmp_path, n=5)
    assert [(path.name, cls) for path, cls in chosen] == [
        ("bolt_0000.png", "bolt"),
        ("gear_0000.png", "gear"),
        ("spring_0000.png", "spring"),
        ("bolt_0001.png", "bolt"),
        ("spring_0001.png", "spring"),
    ]
    assert len(select_test_images(tmp_path, n=100)) == 6


def test_missing_split_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m train.datasets parts --out"):
        select_test_images(tmp_path, n=5)


def test_folder_names_match_labels_exactly_or_up_to_separators():
    assert class_index(PART_LABELS, "hex_nut") == 1
    assert class_index({0: "gear", 1: "Hex nut"}, "hex_nut") == 1
    with pytest.raises(ValueError, match=r"no class 'spring' \(its labels are \['gear', 'hex_nut'\]\)"):
        class_index({0: "gear", 1: "hex_nut"}, "spring")


def test_view_mask_is_the_center_crop():
    from transformers import ConvNextImageProcessor

    # shortest edge 32 at crop_pct 0.875: resize 64 -> 36, center-crop 32, i.e. 2 resized pixels off each side.
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    seen = view_mask(processor, (64, 64), (32, 32))
    rows = np.flatnonzero(seen.any(axis=1))
    assert seen[32, 32] and not seen[0, 0]
    assert rows[0] in (3, 4) and rows[-1] in (59, 60)  # 2 of 36 resized pixels = 3.6 original pixels
    assert seen.sum() == len(rows) ** 2


# ---------------------------------------------------------------------------------------------
# The localisation path end to end, on tiny random classifiers and generated parts


@pytest.fixture(scope="module")
def parts_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parts")
    write_parts(directory, seed=0, size=64, n_per_class=14, n_other=2)  # 2 test images per class
    return directory


def _tiny_parts_classifier(kind: str, directory):
    """Like conftest's tiny_resnet_dir / tiny_vit_dir, with the six part classes as labels."""
    import transformers as tf

    torch.manual_seed(0)
    labels = {"id2label": PART_LABELS, "label2id": {v: k for k, v in PART_LABELS.items()}}
    if kind == "resnet":
        model = tf.ResNetForImageClassification(
            tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **labels)
        )
        processor = tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    else:
        config = tiny_vit_config(PART_LABELS)
        model, processor = tf.ViTForImageClassification(config), tf.ViTImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_localisation_reports_every_measure_in_range(kind, parts_data, tmp_path):
    model_dir = _tiny_parts_classifier(kind, tmp_path / kind)
    report = measure_localisation(model_dir, parts_data, n=8)
    assert report["split"] == "test" and report["method"] == "gradcam" and report["layer"]
    assert len(report["cam_grid"]) == 2 and min(report["cam_grid"]) >= 1
    assert len(report["images"]) == 8
    assert sorted(report["per_class"]) == sorted(PART_KINDS)  # 8 images over 6 classes: every class once
    assert report["overall"]["n"] == 8 and sum(s["n"] for s in report["per_class"].values()) == 8
    for record in report["images"]:
        assert 0.0 <= record["energy_share"] <= 1.0
        assert 0.0 < record["mask_area_share"] < 1.0
        assert 0.0 < record["mask_share_of_view"] <= 1.0
        assert record["mask_area_share"] <= record["resolution_ceiling"] <= 1.0
        assert record["predicted"] in PART_KINDS and isinstance(record["pointing_hit"], bool)
        mask = np.asarray(Image.open(parts_data / "masks" / record["class"] / record["image"].split("/")[-1])) > 127
        assert record["mask_area_share"] == pytest.approx(mask.mean(), abs=1e-4)
    overall = report["overall"]
    assert 0.0 <= overall["pointing_game_hit_rate"] <= 1.0 and 0.0 <= overall["accuracy"] <= 1.0
    goal = report["goal"]
    assert goal["value"] == overall["energy_share"]["mean"] and goal["met"] == (goal["value"] >= 0.6)
    assert overall["energy_share"]["mean"] <= overall["energy_near_object"]["mean"] <= 1.0
    assert sum(row["n"] for row in report["by_object_size"]) == 8
    json.dumps(report, allow_nan=False)  # the report is plain JSON


def test_comparison_rows_follow_the_settings_on_the_same_images(parts_data, tmp_path):
    model_dir = _tiny_parts_classifier("resnet", tmp_path / "resnet")
    settings = [("gradcam", None, False), ("layercam", "resnet.encoder.stages.0", False), ("gradcam", None, True)]
    rows = compare_localisation(model_dir, parts_data, 6, settings)
    assert [(row["method"], row["layer"], row["guided"]) for row in rows] == [
        ("gradcam", "resnet.encoder.stages.1", False),  # None: the pipeline's default layer, named
        ("layercam", "resnet.encoder.stages.0", False),
        ("gradcam", "resnet.encoder.stages.1", True),
    ]
    assert rows[2]["energy_share"] != rows[0]["energy_share"]  # the guided map is another map
    # The earlier stage keeps twice the resolution (stride 2 between the two stages).
    assert [c * 2 for c in rows[0]["cam_grid"]] == rows[1]["cam_grid"]
    assert rows[1]["resolution_ceiling"]["mean"] > rows[0]["resolution_ceiling"]["mean"]
    assert all(sum(size["n"] for size in row["by_object_size"]) == 6 for row in rows)


def test_a_bad_compare_layer_is_refused_before_any_timing(parts_data, tmp_path, capsys):
    model_dir = _tiny_parts_classifier("resnet", tmp_path / "resnet")
    argv = ["--parts-model", str(model_dir), "--parts-data", str(parts_data)]
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--compare", "gradcam", "layercam@resnet.encoder.stage.0"])
    error = capsys.readouterr().err
    assert "--layer/--compare/--guided: layer='resnet.encoder.stage.0' is not a module" in error
    assert "resnet.encoder.stages.0" in error  # the valid candidates are listed
    assert bench.parse_args([*argv, "--compare", "guided-layercam@resnet.encoder.stages.0"]).compare == [
        ("layercam", "resnet.encoder.stages.0", True)
    ]


def test_pixel_detail_on_a_network_without_relus_is_refused_before_any_timing(parts_data, tmp_path, capsys):
    model_dir = _tiny_parts_classifier("vit", tmp_path / "vit")
    with pytest.raises(SystemExit):
        bench.parse_args(
            ["--parts-model", str(model_dir), "--parts-data", str(parts_data), "--compare", "guided-gradcam"]
        )
    assert "--layer/--compare/--guided: pixel detail (guided backpropagation) needs" in capsys.readouterr().err


def test_no_parts_model_means_localisation_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "DEFAULT_PARTS_MODEL", tmp_path / "no-run-here")
    assert bench.parse_args(["--parts-data", str(tmp_path)]).parts_model is None
    speed = {"latency": {}, "goals": {"gradcam_within_3x_of_forward": {"ratio": 2.5, "target": "<= 3", "met": True}}}
    monkeypatch.setattr(bench, "measure_speed", lambda rounds, warmup, with_scorecam: speed)
    report = bench.run_benchmark(None, tmp_path, n=60, rounds=1, warmup=0, with_scorecam=False)
    assert report["localisation"] == {"skipped": "no parts model: run make bench-train first"}
    assert list(report["goals"]) == ["gradcam_within_3x_of_forward"]
    assert report["machine"]["torch_threads"] >= 1


def test_a_parts_model_that_is_not_a_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--parts-model", str(tmp_path)])
    assert "is not a checkpoint directory (no config.json)" in capsys.readouterr().err


@pytest.mark.slow
def test_main_writes_and_prints_the_report(parts_data, tmp_path, capsys):
    model_dir = _tiny_parts_classifier("resnet", tmp_path / "resnet")
    out = tmp_path / "explanation.json"
    argv = ["--parts-model", str(model_dir), "--parts-data", str(parts_data), "--n", "6", "--rounds", "1"]
    assert bench.main([*argv, "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    speed = report["speed"]
    assert speed["image"]["explained_label"] == "espresso"
    methods = {*bench.INTERLEAVED_METHODS, *bench.ISOLATED_METHODS}
    assert set(speed["latency"]) == {
        "forward",
        "gradcam",
        "gradcam_with_faithfulness",
        "gradcam_with_pixel_detail",
        *methods,
    }
    assert speed["cam_grid"] == [7, 7]
    assert speed["ratios"]["gradcam_over_forward"] > 0  # one round on a shared machine: no timing claims
    assert set(report["goals"]) == {"gradcam_within_3x_of_forward", "energy_share_mean_at_least_0.6"}
    assert report["localisation"]["overall"]["n"] == 6

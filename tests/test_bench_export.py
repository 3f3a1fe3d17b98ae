"""The export benchmark's own logic: goals, flags, the held-out set, agreement figures, reuse of exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench import export as bench_export
from bench.export import EAGER, FP32, INT8


def _stats(median_ms: float) -> dict:
    return {"median_ms": median_ms, "p95_ms": median_ms, "n": 1}


def _latency(classifier=(40.0, 10.0, 5.0), tile=(900.0, 300.0, 200.0), strip=(4000.0, 1500.0, 1000.0)) -> dict:
    """Latency groups as ``split_latency`` returns them; pipelines 10% over their forwards."""
    runtimes = (EAGER, FP32, INT8)
    return {
        "classifier_forward": {rt: _stats(ms) for rt, ms in zip(runtimes, classifier)},
        "classify": {rt: _stats(ms * 1.1) for rt, ms in zip(runtimes, classifier)},
        "segmenter_tile": {rt: _stats(ms) for rt, ms in zip(runtimes, tile)},
        "segment_forward": {rt: _stats(ms) for rt, ms in zip(runtimes, strip)},
        "segment": {rt: _stats(ms * 1.1) for rt, ms in zip(runtimes, strip)},
    }


def _quality(top1_fp32=1.0, top1_int8=0.995, defect_pixels=0.985, dice_change=-0.005) -> dict:
    return {
        "classifier": {FP32: {"top1_agreement": top1_fp32}, INT8: {"top1_agreement": top1_int8}},
        "segmenter": {
            EAGER: {"mean_dice": 0.9},
            FP32: {"defect_pixel_agreement": 1.0, "mean_dice_change": 0.0},
            INT8: {"defect_pixel_agreement": defect_pixels, "mean_dice_change": dice_change},
        },
    }


def test_every_goal_is_met_by_figures_that_clear_every_bound():
    goals = bench_export.evaluate_goals(_latency(), _quality())
    assert {name: goal["met"] for name, goal in goals.items() if not goal["met"]} == {}
    assert goals["default_fp32_2x_eager_same_top1"]["figures"] == {"speed-up": 4.0, "top-1 agreement": 1.0}


def test_one_disagreement_fails_the_fp32_goal_however_fast_it_is():
    goals = bench_export.evaluate_goals(_latency(classifier=(100.0, 1.0, 0.5)), _quality(top1_fp32=0.998))
    assert goals["default_fp32_2x_eager_same_top1"]["met"] is False
    assert "top-1 agreement 0.998 (>= 1)" in goals["default_fp32_2x_eager_same_top1"]["text"]


def test_the_int8_classifier_goal_compares_with_fp32_not_eager():
    # 8x faster than eager but only 1.25x faster than fp32: not met.
    goals = bench_export.evaluate_goals(_latency(classifier=(40.0, 6.25, 5.0)), _quality())
    goal = goals["default_int8_1.3x_fp32_99pct_top1"]
    assert goal["met"] is False
    assert goal["figures"]["speed-up over fp32"] == 1.25


def test_an_int8_segmenter_whose_dice_drops_too_far_misses_its_goal_in_either_direction():
    for change in (-0.02, 0.02):
        goals = bench_export.evaluate_goals(_latency(), _quality(dice_change=change))
        assert goals["segmenter_int8_2.5x_eager_98pct_defect_pixels_dice_0.01_segment"]["met"] is False
        assert goals["segmenter_fp32_1.5x_eager_segment"]["met"] is True


def test_pipeline_overhead_is_judged_per_runtime_against_its_own_forward():
    latency = _latency()
    latency["classify"][FP32] = _stats(14.0)  # 1.4x its forward of 10 ms
    goals = bench_export.evaluate_goals(latency, _quality())
    assert goals["pipeline_within_1.3x_of_forward_classify_onnx_fp32"]["met"] is False
    assert goals["pipeline_within_1.3x_of_forward_classify_onnx_fp32"]["figures"] == {"classify() / forward": 1.4}
    assert goals["pipeline_within_1.3x_of_forward_classify_eager"]["met"] is True


def test_goals_without_int8_figures_are_not_measured_rather_than_met_or_failed():
    latency = {group: {rt: s for rt, s in stats.items() if rt != INT8} for group, stats in _latency().items()}
    quality = _quality()
    del quality["classifier"][INT8], quality["segmenter"][INT8]
    goals = bench_export.evaluate_goals(latency, quality)
    assert goals["default_int8_1.3x_fp32_99pct_top1"]["met"] is None
    assert "not measured" in goals["default_int8_1.3x_fp32_99pct_top1"]["text"]
    assert goals["default_fp32_2x_eager_same_top1"]["met"] is True


def test_a_measured_miss_outweighs_an_unmeasured_figure():
    missed = bench_export.Criterion("speed-up", 1.0, 2.0)
    unknown = bench_export.Criterion("agreement", None, 0.99)
    assert bench_export.goal_verdict([missed, unknown]) is False
    assert bench_export.goal_verdict([bench_export.Criterion("speed-up", 2.0, 2.0), unknown]) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-heldout", "499"], "--n-heldout must be at least 500, got 499"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--segment-rounds", "0"], "--segment-rounds must be at least 1, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        (["--out", "results.txt"], "--out must be a .json file path"),
    ],
)
def test_bad_flags_are_refused_with_the_flag_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_export.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_held_out_builder_takes_large_photos_first_then_generates_the_rest(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (80, 64), "red").save(photos / "b.png")
    Image.new("L", (100, 90), 7).save(photos / "a.jpg")
    Image.new("RGB", (63, 200), "blue").save(photos / "thin.png")  # shorter side below 64: left out
    (photos / "notes.txt").write_text("not an image")
    folder = tmp_path / "held-out"
    manifest = bench_export.write_held_out_images(folder, n=9, seed=5, photos_dir=photos, size=32)
    assert (manifest["photos"], manifest["generated"]) == (2, 7)
    assert manifest["files"][:2] == ["photo_a.png", "photo_b.png"]
    written = sorted(path.name for path in folder.glob("*.png"))
    assert written == sorted(manifest["files"]) and len(written) == 9
    kinds = [name.split("_", 2)[2].removesuffix(".png") for name in manifest["files"][2:]]
    assert kinds == [bench_export.generated_kind(i) for i in range(7)]
    with Image.open(folder / "photo_a.png") as image:
        assert image.mode == "RGB"  # converted, as the classifier is served RGB


def test_the_held_out_set_is_reused_when_it_matches_and_rewritten_without_stale_files_when_not(tmp_path):
    folder = tmp_path / "held-out"
    first = bench_export.write_held_out_images(folder, n=6, seed=1, photos_dir=tmp_path / "none", size=32)
    stamp = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.png")}
    again = bench_export.write_held_out_images(folder, n=6, seed=1, photos_dir=tmp_path / "none", size=32)
    assert again == first
    assert {path.name: path.stat().st_mtime_ns for path in folder.glob("*.png")} == stamp
    smaller = bench_export.write_held_out_images(folder, n=3, seed=1, photos_dir=tmp_path / "none", size=32)
    assert sorted(path.name for path in folder.glob("*.png")) == sorted(smaller["files"])
    assert len(smaller["files"]) == 3
    assert json.loads((folder / bench_export.HELD_OUT_MANIFEST).read_text())["n"] == 3


def test_different_seeds_draw_different_held_out_images(tmp_path):
    sets = [
        bench_export.write_held_out_images(tmp_path / str(seed), n=2, seed=seed, photos_dir=tmp_path / "x", size=32)
        for seed in (1, 2)
    ]
    pixels = [np.asarray(Image.open(tmp_path / str(seed) / sets[i]["files"][0])) for i, seed in enumerate((1, 2))]
    assert not np.array_equal(*pixels)


def test_classifier_agreement_counts_disagreements_and_near_ties():
    eager = np.array([[5.0, 1.0, 0.0], [1.0, 1.05, 0.0], [0.0, 0.0, 3.0], [2.0, 0.0, 1.0]])
    exported = eager.copy()
    exported[1] = [1.1, 1.0, 0.0]  # a near tie (eager's top two 0.05 apart) swapped
    exported[3] = [0.0, 0.5, 1.0]  # a clear answer changed
    figures = bench_export.classifier_agreement(eager, exported)
    assert figures["top1_agreement"] == 0.5
    assert (figures["disagreements"], figures["near_ties"], figures["images"]) == (2, 1, 4)
    assert figures["top1_agreement_without_near_ties"] == pytest.approx(2 / 3, abs=1e-6)
    assert figures["max_abs_logit_diff"] == pytest.approx(2.0)


def test_defect_pixel_agreement_counts_extra_defects_against_the_larger_area():
    eager = np.zeros((4, 4), np.uint8)
    eager[0, :2] = 1  # 2 defect pixels
    other = eager.copy()
    other[3, :] = 2  # 4 extra defect pixels eager does not paint
    figures = bench_export.defect_pixel_agreement([eager], [other])
    assert figures["defect_pixel_agreement"] == pytest.approx(2 / 6)
    assert (figures["eager_defect_pixels"], figures["defect_pixels"], figures["same_class_defect_pixels"]) == (2, 6, 2)
    assert figures["pixel_agreement"] == pytest.approx(12 / 16)
    wrong_class = eager.copy()
    wrong_class[0, 0] = 3
    assert bench_export.defect_pixel_agreement([eager], [wrong_class])["defect_pixel_agreement"] == 0.5
    assert bench_export.defect_pixel_agreement([np.zeros((2, 2))], [np.zeros((2, 2))])["defect_pixel_agreement"] == 1


def test_an_export_is_reused_only_when_made_by_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_export, "EXPORTS", tmp_path)
    job = bench_export.ExportJob("default-fp32", "default", ("--eval_dir", "/data/held out"))
    assert job.arguments()[:4] == ["default", str(tmp_path / "default-fp32"), "--format", "onnx"]
    assert not bench_export.is_current(job)
    job.destination.mkdir()
    (job.destination / "model.onnx").write_bytes(b"graph")
    (job.destination / "export_report.json").write_text(json.dumps({"command": job.command()}))
    assert bench_export.is_current(job)
    assert "'/data/held out'" in job.command()  # quoted as shlex.join records it
    changed = bench_export.ExportJob("default-fp32", "default", ("--eval_dir", "/data/other"))
    assert not bench_export.is_current(changed)
    (job.destination / "model.onnx").unlink()
    assert not bench_export.is_current(job)


def test_int8_exports_are_asked_for_only_without_skip_int8():
    names = bench_export.EXPORT_NAMES
    jobs = bench_export.export_jobs(*(bench_export.DATA,) * 4, with_int8=False)
    assert [job.name for job in jobs] == [
        names["default"][FP32],
        names["steel-stage1"][FP32],
        names["steel-segformer"][FP32],
    ]
    jobs = {job.name: job for job in bench_export.export_jobs(*(bench_export.DATA,) * 4, with_int8=True)}
    default_int8, segmenter_int8 = jobs[names["default"][INT8]], jobs[names["steel-segformer"][INT8]]
    # The default model's int8 must write its figures even below the export's 99% floor.
    assert "--min_top1_agreement_int8 0" in " ".join(default_int8.flags)
    assert "--min_top1_agreement_int8" not in segmenter_int8.flags
    for job in (default_int8, segmenter_int8):
        assert f"--calibration_images {bench_export.INT8_CALIBRATION_IMAGES}" in " ".join(job.flags)


def test_split_latency_groups_samples_by_group_and_runtime():
    latency = bench_export.split_latency({"classify/eager": [3.0, 1.0, 2.0], "classify/onnx_fp32": [1.0]})
    assert latency == {"classify": {EAGER: {"median_ms": 2.0, "p95_ms": 2.9, "n": 3}, FP32: _stats(1.0)}}
    assert bench_export.ratio(latency, "classify", EAGER, FP32) == 2.0
    assert bench_export.ratio(latency, "classify", EAGER, INT8) is None

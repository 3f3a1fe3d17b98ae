"""The defect segmentation pipeline on tiny random SegFormers, through the real loading code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoints import ModelLoadError
from common.image_io import ImageLoadError
from common.onnx_network import OnnxNetwork
from common.rle import rle_decode
from pipelines.runtime import ServedNetwork
from pipelines.segmentation import (
    CLASS_COLOURS,
    DefectSegmenter,
    TileGrid,
    label_map_png,
    overlay_masks,
    submission_rows,
    write_submission,
)
from pipelines.segmentation.cli import main
from tests.conftest import export_onnx_copy, save_tiny_stage1

DEFECTS = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
# Stage 1 lists the same defects in another order: they are matched by name, not position.
STAGE1_ORDER = ["scratches", "patches", "pitting", "crazing"]


def _save_segformer(directory, id2label=DEFECTS, image_mean=(0.5, 0.4, 0.3)):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from tests.conftest import tiny_segformer_config

    torch.manual_seed(0)
    config = tiny_segformer_config(id2label)
    SegformerForSemanticSegmentation(config).save_pretrained(directory)
    SegformerImageProcessor(image_mean=list(image_mean), image_std=[0.2, 0.25, 0.3]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    return _save_segformer(tmp_path_factory.mktemp("tiny-segformer"))


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    """Stage 1 says scratches are absent (sigmoid(-20) ~ 0) and every other defect present."""
    return save_tiny_stage1(tmp_path_factory.mktemp("stage1"), STAGE1_ORDER, [-20.0, 5.0, 5.0, 5.0])


@pytest.fixture(scope="module")
def segformer_onnx_dir(segformer_dir, tmp_path_factory):
    """``segformer_dir`` with an ONNX export of dynamic height and width, as train.export writes a segmenter."""
    return export_onnx_copy(segformer_dir, tmp_path_factory.mktemp("exported") / "segformer", dynamic_size=True)


@pytest.fixture(scope="module")
def stage1_onnx_dir(stage1_dir, tmp_path_factory):
    return export_onnx_copy(stage1_dir, tmp_path_factory.mktemp("exported") / "stage1")


def _served_dir(request, runtime: str, name: str = "segformer"):
    """The tiny checkpoint ``name`` for ``runtime``: its ONNX export for "onnx" (made on first use)."""
    return request.getfixturevalue(f"{name}_onnx_dir" if runtime == "onnx" else f"{name}_dir")


def _random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _smooth_image(height, width):
    """Gradients, so that tiles see what the whole image shows around them."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [(ys / height + xs / width) * 127, xs / width * 255, (ys / height) * 255]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def _favour_class(segmenter: DefectSegmenter, class_id: int, logit: float = 5.0) -> None:
    """Make the decode head answer ``class_id`` at every pixel: a behaviour we can assert on."""
    classifier = segmenter.model.decode_head.classifier
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.bias[class_id] = logit


def _assert_consistent(segmentation, size):
    height, width = size
    label_map = segmentation.label_map
    assert label_map.shape == (height, width) and label_map.dtype == np.uint8
    assert [r.class_id for r in segmentation.regions] == [1, 2, 3, 4]
    assert [r.label for r in segmentation.regions] == [DEFECTS[i] for i in range(1, 5)]
    background = np.mean(label_map == 0)
    assert background + sum(r.area_fraction for r in segmentation.regions) == pytest.approx(1.0)
    for region in segmentation.regions:
        assert region.mask.shape == (height, width) and region.mask.dtype == bool
        np.testing.assert_array_equal(region.mask, label_map == region.class_id)
        assert region.area_fraction == pytest.approx(region.mask.mean())
        np.testing.assert_array_equal(rle_decode(region.rle, (height, width)), region.mask)
        assert (region.rle == "") == (not region.mask.any()) == (region.confidence == 0.0)
    assert segmentation.defective == bool((label_map > 0).any())


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("size", [(70, 333), (31, 45), (256, 96)])
def test_masks_have_the_image_size_and_agree_with_the_label_map(request, runtime, size):
    segmenter = DefectSegmenter.from_pretrained(_served_dir(request, runtime), runtime=runtime)
    assert segmenter.runtime == runtime
    segmentation = segmenter.segment(_random_image(*size), return_probabilities=True)
    _assert_consistent(segmentation, size)
    assert segmentation.defective  # a random model paints several classes somewhere
    probabilities = segmentation.probabilities
    assert probabilities.shape == (5, *size) and probabilities.dtype == np.float16
    assert probabilities.astype(np.float32).sum(axis=0) == pytest.approx(np.ones(size), abs=5e-3)
    for region in segmentation.regions:
        if region.mask.any():  # mean max-softmax over the class's own pixels
            expected = probabilities.astype(np.float32).max(axis=0)[region.mask].mean()
            assert region.confidence == pytest.approx(expected, abs=2e-3)
    assert segmenter.segment(_random_image(*size)).probabilities is None  # kept small unless asked


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_wide_image_tiled_or_whole_gives_the_same_answer(request, runtime):
    image = _smooth_image(64, 900)
    whole = DefectSegmenter.from_pretrained(_served_dir(request, runtime), runtime=runtime)
    tiled = DefectSegmenter.from_pretrained(_served_dir(request, runtime), tile_width=256, runtime=runtime)
    tiles, grid = tiled.preprocess(image)
    assert tiles.shape == (5, 3, 64, 256)  # 900 -> padded 928: tiles at 0, 192, 384, 576, 672
    assert grid.origins == ((0, 0), (0, 192), (0, 384), (0, 576), (0, 672))
    assert whole.preprocess(image)[0].shape == (1, 3, 64, 928)
    expected, actual = whole.segment(image), tiled.segment(image)
    _assert_consistent(actual, (64, 900))
    assert np.mean(expected.label_map == actual.label_map) > 0.9


def test_onnx_tiles_give_the_label_maps_and_confidences_of_pytorch(segformer_onnx_dir):
    image = _smooth_image(64, 900)
    answers = {
        runtime: DefectSegmenter.from_pretrained(segformer_onnx_dir, tile_width=256, runtime=runtime).segment(
            image, return_probabilities=True
        )
        for runtime in ("torch", "onnx")
    }
    eager, exported = answers["torch"], answers["onnx"]
    assert np.mean(eager.label_map == exported.label_map) >= 0.999
    np.testing.assert_allclose(exported.probabilities, eager.probabilities, atol=2e-3)  # float16 rounding
    assert [r.confidence for r in exported.regions] == pytest.approx([r.confidence for r in eager.regions], abs=1e-3)


class _FixedSizeGraph(OnnxNetwork):
    """Stands in for an ONNX graph exported at one tile size: refuses other shapes, answers like eager."""

    def __init__(self, model, size):
        self.model, self.input_shape, self.path = model, (None, 3, *size), Path("fixed-size.onnx")

    def __call__(self, pixel_values):
        assert self.accepts(pixel_values.shape), pixel_values.shape
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits


def test_a_fixed_size_graph_needs_tiles_of_its_size(segformer_dir):
    eager = DefectSegmenter.from_pretrained(segformer_dir, runtime="torch")
    graph = ServedNetwork("onnx", _FixedSizeGraph(eager.model, (64, 128)))

    def served(**options):
        return DefectSegmenter(eager.model, eager.processor, "fixed", served=graph, **options)

    with pytest.raises(ModelLoadError, match=r"takes only N x 3 x 64 x 128 inputs, but tile_width=256.*tile_width=128"):
        served(tile_width=256)
    tiled = served(tile_width=128)
    image = _smooth_image(64, 900)  # 64 high: every 128-wide tile is the graph's size
    expected = DefectSegmenter(eager.model, eager.processor, "eager", tile_width=128).segment(image)
    np.testing.assert_array_equal(tiled.segment(image).label_map, expected.label_map)
    with pytest.raises(ValueError, match=r"takes N x 3 x 64 x 128 inputs only, but this image gives 96x128 tiles"):
        tiled.segment(_smooth_image(70, 900))  # padded to 96 high


def test_tiles_blend_back_into_one_seamless_map():
    # Each tile's "logits" are the padded image's own x and y coordinates: a correct stitch
    # (placement, ramp weights summing to 1, crop) must give back exactly the coordinates.
    grid = TileGrid((64, 300), (64, 300), (64, 320), (64, 128), ((0, 0), (0, 64), (0, 128), (0, 192)), overlap=64)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(320.0), indexing="ij")
    coordinates = torch.stack([xs, ys])
    tiles = torch.stack([coordinates[:, :, x : x + 128] for _, x in grid.origins])
    segmenter = DefectSegmenter.__new__(DefectSegmenter)  # stitch() needs no model
    stitched = DefectSegmenter.stitch(segmenter, tiles, grid)
    assert stitched.shape == (2, 64, 300)
    torch.testing.assert_close(stitched, coordinates[:, :, :300])


def test_the_class_the_model_favours_fills_the_image(segformer_dir):
    segmenter = DefectSegmenter.from_pretrained(segformer_dir, tile_width=128)
    _favour_class(segmenter, 3)
    segmentation = segmenter.segment(_random_image(70, 333))
    assert (segmentation.label_map == 3).all()
    scratches = segmentation.region("scratches")
    assert scratches.class_id == 3 and scratches.area_fraction == 1.0 and scratches.rle == f"1 {70 * 333}"
    assert scratches.confidence == pytest.approx(np.exp(5) / (np.exp(5) + 4), rel=1e-5)
    assert [r.area_fraction for r in segmentation.regions if r.class_id != 3] == [0.0, 0.0, 0.0]
    assert segmentation.defective and segmentation.stage1 is None


def test_preprocessing_comes_from_the_checkpoint(segformer_dir):
    segmenter = DefectSegmenter.from_pretrained(segformer_dir)
    mean_colour = Image.new("RGB", (40, 50), (round(0.5 * 255), round(0.4 * 255), round(0.3 * 255)))
    tiles, grid = segmenter.preprocess(mean_colour)
    assert grid.padded_size == (64, 64) and grid.original_size == (50, 40)
    assert tiles.abs().max() < 0.02  # the processor's mean, normalised, is 0; so is the padding
    info = segmenter.describe()
    assert info["input"]["mean"] == (0.5, 0.4, 0.3) and info["input"]["std"] == (0.2, 0.25, 0.3)
    assert info["input"]["resolution"] == "native" and info["input"]["processor_size"] == (512, 512)
    assert info["id2label"] == DEFECTS and info["num_labels"] == 5 and info["model_type"] == "segformer"
    assert info["source"] == str(segformer_dir) and info["stage1"] is None


def test_resize_to_runs_resized_but_answers_at_the_original_size(segformer_dir):
    segmenter = DefectSegmenter.from_pretrained(segformer_dir, resize_to=(64, 128))
    tiles, grid = segmenter.preprocess(_random_image(70, 333))
    assert tiles.shape == (1, 3, 64, 128) and grid.model_size == (64, 128)
    _assert_consistent(segmenter.segment(_random_image(70, 333)), (70, 333))


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_stage1_removes_the_classes_it_rules_out(request, runtime):
    segformer = _served_dir(request, runtime)
    plain = DefectSegmenter.from_pretrained(segformer, runtime=runtime).segment(_random_image(70, 333))
    assert plain.region("scratches").area_fraction > 0  # the random model does paint scratches
    stage1 = _served_dir(request, runtime, "stage1")
    two_stage = DefectSegmenter.from_pretrained(segformer, stage1=stage1, runtime=runtime)
    assert two_stage.runtime == two_stage.stage1.runtime == runtime
    segmentation = two_stage.segment(_random_image(70, 333))
    _assert_consistent(segmentation, (70, 333))
    assert segmentation.stage1["scratches"] < 1e-6 and segmentation.stage1["pitting"] > 0.99
    scratches = segmentation.region(3)
    assert scratches.ruled_out and scratches.area_fraction == 0 and scratches.rle == ""
    # Scratch pixels became background; every other pixel kept its class.
    expected = np.where(plain.label_map == 3, 0, plain.label_map)
    np.testing.assert_array_equal(segmentation.label_map, expected)
    assert [r.ruled_out for r in segmentation.regions] == [False, False, True, False]
    assert two_stage.describe()["stage1"]["thresholds"] == dict.fromkeys(
        ["pitting", "crazing", "scratches", "patches"], 0.5
    )


def test_stage1_uses_its_calibrated_thresholds(segformer_dir, tmp_path):
    stage1 = save_tiny_stage1(tmp_path / "stage1", STAGE1_ORDER, [5.0, 5.0, 5.0, 5.0])  # all at sigmoid(5) = 0.993
    thresholds = {"scratches": 0.5, "patches": 0.999, "pitting": 0.5, "crazing": 0.5}
    (stage1 / "calibration.json").write_text(json.dumps({"multi_label_thresholds": list(thresholds.values())}))
    segmenter = DefectSegmenter.from_pretrained(segformer_dir, stage1=stage1)
    _favour_class(segmenter, 4)  # patches everywhere, but stage 1 needs 0.999 to believe it
    segmentation = segmenter.segment(_random_image(40, 60))
    assert segmentation.region("patches").ruled_out and not segmentation.defective
    assert (segmentation.label_map == 0).all()


def test_stage1_with_other_class_names_is_refused(segformer_dir, tmp_path, tiny_vit_dir):
    stage1 = save_tiny_stage1(tmp_path / "stage1", ["pitting", "crazing", "scratches", "dents"], [0.0] * 4)
    with pytest.raises(ModelLoadError, match=r"'dents'.*'patches'"):
        DefectSegmenter.from_pretrained(segformer_dir, stage1=stage1)
    with pytest.raises(ModelLoadError, match="single-label"):
        DefectSegmenter.from_pretrained(segformer_dir, stage1=tiny_vit_dir)


def test_min_area_clears_small_regions_per_class(segformer_dir):
    segmenter = DefectSegmenter.from_pretrained(segformer_dir)
    image = _random_image(70, 333)
    plain = segmenter.segment(image)
    counts = {r.label: int(r.mask.sum()) for r in plain.regions}
    smallest = min((label for label in counts if counts[label]), key=counts.get)
    only_smallest = segmenter.segment(image, min_area={smallest: counts[smallest] + 1})
    assert only_smallest.region(smallest).area_fraction == 0 and not only_smallest.region(smallest).ruled_out
    assert {r.label: int(r.mask.sum()) for r in only_smallest.regions} == {**counts, smallest: 0}
    everything = segmenter.segment(image, min_area=70 * 333)
    assert not everything.defective and (everything.label_map == 0).all()
    with pytest.raises(ValueError, match="dents"):
        segmenter.segment(image, min_area={"dents": 10})


def test_min_areas_tuned_in_training_apply_by_default(segformer_dir, tmp_path):
    import json
    import shutil

    image = _random_image(70, 333)
    counts = {r.label: int(r.mask.sum()) for r in DefectSegmenter.from_pretrained(segformer_dir).segment(image).regions}
    smallest = min((label for label in counts if counts[label]), key=counts.get)
    tuned_dir = shutil.copytree(segformer_dir, tmp_path / "tuned")
    config = json.loads((tuned_dir / "config.json").read_text())
    config["min_area"] = {smallest: counts[smallest] + 1}
    (tuned_dir / "config.json").write_text(json.dumps(config))
    segmenter = DefectSegmenter.from_pretrained(tuned_dir)
    assert {r.label: int(r.mask.sum()) for r in segmenter.segment(image).regions} == {**counts, smallest: 0}
    assert segmenter.segment(image, min_area=0).region(smallest).mask.sum() == counts[smallest]  # explicit wins
    assert segmenter.min_area_at_least(5)[1] == max(5, config["min_area"].get(segmenter.id2label[1], 0))
    assert segmenter.describe()["min_area"] == config["min_area"]
    config["min_area"] = {"dents": 10}
    (tuned_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="bad min_area.*dents"):
        DefectSegmenter.from_pretrained(tuned_dir)


def test_two_stage_minimum_areas_apply_only_with_a_stage1(segformer_dir, stage1_dir, tmp_path):
    import shutil

    tuned_dir = shutil.copytree(segformer_dir, tmp_path / "tuned")
    config = json.loads((tuned_dir / "config.json").read_text())
    config.update(min_area={"pitting": 500, "patches": 900}, min_area_two_stage={"pitting": 7, "patches": 0})
    (tuned_dir / "config.json").write_text(json.dumps(config))
    alone = DefectSegmenter.from_pretrained(tuned_dir)
    assert alone.min_areas(None) == [0, 500, 0, 0, 900] and alone.describe()["min_area_from"] == "min_area"
    two_stage = DefectSegmenter.from_pretrained(tuned_dir, stage1=stage1_dir)
    assert two_stage.min_areas(None) == [0, 7, 0, 0, 0]
    assert two_stage.describe()["min_area_from"] == "min_area_two_stage"
    assert two_stage.min_area_at_least(10) == {1: 10, 2: 10, 3: 10, 4: 10}
    config["min_area_two_stage"] = {"dents": 3}
    (tuned_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="bad min_area_two_stage.*dents"):
        DefectSegmenter.from_pretrained(tuned_dir)  # refused even without stage 1: the file is wrong


def test_bad_options_and_unreadable_images_get_clear_errors(segformer_dir, tmp_path):
    with pytest.raises(ValueError, match="tile_width.*multiple of 32.*500"):
        DefectSegmenter.from_pretrained(segformer_dir, tile_width=500)
    with pytest.raises(ValueError, match="tile_width"):
        DefectSegmenter.from_pretrained(segformer_dir, tile_width=64)  # no wider than the overlap
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.jpg"):
        DefectSegmenter.from_pretrained(segformer_dir).segment(bad)


def test_overlay_tints_the_defects_in_their_colours(segformer_dir):
    image = _random_image(70, 333)
    segmentation = DefectSegmenter.from_pretrained(segformer_dir).segment(image)
    overlay = overlay_masks(image, segmentation)
    assert overlay.mode == "RGB" and overlay.size == image.size
    before, after = np.asarray(image, dtype=int), np.asarray(overlay, dtype=int)
    changed = (before != after).any(axis=-1)
    defect = segmentation.label_map > 0
    assert not changed[~defect].any()  # background pixels are left alone
    assert changed[defect].mean() > 0.99
    # Tinting moves each defect pixel towards its class colour.
    colours = np.array([CLASS_COLOURS[i] for i in range(5)])[segmentation.label_map]
    closer = np.abs(after - colours).sum(-1) < np.abs(before - colours).sum(-1)
    assert closer[defect].mean() > 0.95
    with pytest.raises(ValueError, match="333x70"):
        overlay_masks(image.resize((100, 20)), segmentation)


def test_label_map_png_holds_class_ids_with_the_class_colours(segformer_dir, tmp_path):
    segmentation = DefectSegmenter.from_pretrained(segformer_dir).segment(_random_image(70, 333))
    picture = label_map_png(segmentation)
    picture.save(tmp_path / "labels.png")
    reloaded = Image.open(tmp_path / "labels.png")
    assert reloaded.mode == "P"
    np.testing.assert_array_equal(np.asarray(reloaded), segmentation.label_map)
    palette = reloaded.getpalette()
    assert [tuple(palette[3 * i : 3 * i + 3]) for i in range(5)] == [CLASS_COLOURS[i] for i in range(5)]


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_cli_writes_a_kaggle_submission_and_reports_unreadable_files(request, runtime, tmp_path, capsys):
    segformer_dir = _served_dir(request, runtime)
    folder = tmp_path / "test_images"
    folder.mkdir()
    for seed, name in enumerate(["0002cc93b.jpg", "00031f466.png"]):
        _random_image(64, 200, seed).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "submission.csv"
    options = ["--csv", str(out), "--tile-width", "128", "--no-progress", "--runtime", runtime]
    assert main([str(folder), "--model", str(segformer_dir), *options]) == 0
    assert "broken.jpg" in capsys.readouterr().err
    with open(out, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["ImageId", "EncodedPixels", "ClassId"]
    assert [(r[0], r[2]) for r in rows[1:]] == [
        (i, str(c)) for i in ["0002cc93b.jpg", "00031f466.png"] for c in range(1, 5)
    ]
    segmenter = DefectSegmenter.from_pretrained(segformer_dir, tile_width=128, runtime=runtime)
    expected = submission_rows("0002cc93b.jpg", segmenter.segment(folder / "0002cc93b.jpg"))
    assert [(i, rle, int(c)) for i, rle, c in rows[1:5]] == expected
    assert any(rle for _, rle, _ in rows[1:])  # the random model finds "defects"
    for _, rle, _ in rows[1:]:
        rle_decode(rle, (64, 200))  # every RLE fits the image
    assert write_submission([folder / "broken.jpg"], tmp_path / "empty.csv", segmenter, progress=False) == (0, 1)
    (folder / "again").mkdir()
    _random_image(64, 200).save(folder / "again" / "0002cc93b.jpg")
    with pytest.raises(ValueError, match="0002cc93b.jpg"):  # Kaggle ImageIds must be unique
        write_submission(folder, tmp_path / "dupes.csv", segmenter, progress=False)

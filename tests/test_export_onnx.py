"""train.export --format onnx: the exported graph answers like eager, or nothing is written.

Tiny random models built from configs, exported through the command line and reloaded
through the real loading code; one slow test exports the real default model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from common.checkpoint_files import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    EXPORT_REPORT_FILE,
    MODEL_CARD_FILE,
    ONNX_FILE,
    PROCESSOR_FILE,
    WEIGHTS_FILE,
)
from common.checkpoints import load_image_processor
from common.onnx_network import OUTPUT_NAME, OnnxNetwork
from common.preprocessing import batch_preprocessor, input_geometry
from tests.conftest import TINY_LABELS, save_tiny_stage1, tiny_segformer_config, write_colour_folders
from train.export import main

FAST = ["--latency_runs", "2"]


def _export(capsys, *argv):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def _report(directory):
    return json.loads((directory / EXPORT_REPORT_FILE).read_text())


def _write_images(folder, n, seed=0, size=(40, 48), scale=1.0, offset=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(offset + scale * rng.integers(0, 256, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def labelled_eval(tmp_path_factory):
    """An imagefolder whose folders are the tiny models' labels (``hex_nut`` for "hex nut")."""
    root = tmp_path_factory.mktemp("labelled")
    for index, label in TINY_LABELS.items():
        _write_images(root / label.replace(" ", "_"), 4, seed=index)
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_folders(tmp_path_factory.mktemp("colours"), {"train": 12, "test": 4})


@pytest.fixture(scope="module")
def colour_resnet_dir(tiny_resnet_dir, colours, tmp_path_factory):
    """The tiny ResNet trained a few steps to tell red, green and blue apart: answers that vary by image.

    A random tiny net gives every image the same top-1 class, so no quantization could change
    its answers; this one has something to lose.
    """
    from transformers import AutoModelForImageClassification

    from train.export.images import image_files

    torch.manual_seed(0)
    names = ["red", "green", "blue"]
    model = AutoModelForImageClassification.from_pretrained(tiny_resnet_dir)
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    processor = load_image_processor(tiny_resnet_dir)
    files = image_files(colours / "train")
    pixel_values = batch_preprocessor(processor)([Image.open(path).convert("RGB") for path in files])
    labels = torch.tensor([names.index(path.parent.name) for path in files])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("colour-resnet")
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_fp32_export_keeps_the_checkpoint_and_answers_like_eager(tiny_resnet_dir, labelled_eval, tmp_path, capsys):
    source = tmp_path / "run"
    shutil.copytree(tiny_resnet_dir, source)
    (source / MODEL_CARD_FILE).write_text("# tiny\n")
    (source / CALIBRATION_FILE).write_text(json.dumps({"temperature": 1.5}))
    (source / "training_args.bin").write_bytes(b"not shipped")
    out = tmp_path / "shipped"

    code, stdout, _ = _export(capsys, source, out, "--format", "onnx", "--eval_dir", labelled_eval, *FAST)

    assert code == 0, stdout
    for name in (CONFIG_FILE, CALIBRATION_FILE, PROCESSOR_FILE, MODEL_CARD_FILE, ONNX_FILE):
        assert (out / name).is_file(), name
    # The eager weights stay, byte for byte (Grad-CAM needs them); training state does not.
    assert (out / WEIGHTS_FILE).read_bytes() == (source / WEIGHTS_FILE).read_bytes()
    assert not (out / "training_args.bin").exists()
    report = _report(out)
    assert report["exported"]["top1_agreement"] == 1.0
    assert report["exported"]["max_abs_logit_diff"] < 1e-4
    assert report["exported"]["accuracy_change"] == 0.0  # labels came from the folder names
    assert report["held_out"]["images"] == 12 and report["held_out"]["labelled"]
    assert report["latency_ms_eager"] > 0 and report["latency_ms_onnx"] > 0
    assert set(report["cpu_flags"]) >= {"avx2", "avx512f", "avx512_vnni", "amx_tile"}
    assert report["precision"] == "float32" and report["quantization"] is None
    assert "python -m train.export" in report["command"]
    card = (out / MODEL_CARD_FILE).read_text()
    assert "## Export" in card and "top-1 agreement with eager" in card and EXPORT_REPORT_FILE in card
    # The graph is the bare network: pixel_values -> a logits tensor, one row per image, any batch.
    network = OnnxNetwork(out / ONNX_FILE)
    assert [o.name for o in network.session.get_outputs()] == [OUTPUT_NAME]
    assert network(torch.zeros(3, 3, 32, 32)).shape == (3, len(TINY_LABELS))


def test_a_vit_exports_with_full_agreement(tiny_vit_dir, labelled_eval, tmp_path, capsys):
    code, stdout, _ = _export(
        capsys, tiny_vit_dir, tmp_path / "vit", "--format", "onnx", "--eval_dir", labelled_eval, *FAST
    )
    assert code == 0, stdout
    assert _report(tmp_path / "vit")["exported"]["top1_agreement"] == 1.0


@pytest.fixture(scope="module")
def same_padded_timm_dir(tmp_path_factory):
    """A tiny timm EfficientNet with TF "same" padding, as timm's ``tf_`` models (the default) have."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    config = TimmWrapperConfig(
        architecture="test_efficientnet",
        model_args={"pad_type": "same"},
        num_labels=3,
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
        pretrained_cfg={
            "input_size": [3, 46, 46],  # not a multiple of the stride: "same" pads differ by size
            "interpolation": "bicubic",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "crop_pct": 0.875,
        },
    )
    directory = tmp_path_factory.mktemp("same-padded-timm")
    TimmWrapperForImageClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def timm_export(same_padded_timm_dir, tmp_path_factory):
    """The same-padded timm model exported to fp32 ONNX, checked on photo-sized images."""
    root = tmp_path_factory.mktemp("timm-export")
    photos = _write_images(root / "photos", 3, size=(61, 83))
    out = root / "out"
    assert main([str(same_padded_timm_dir), str(out), "--format", "onnx", "--eval_dir", str(photos), *FAST]) == 0
    return out, photos


def test_tf_same_padding_is_exported_at_the_served_size_only(timm_export):
    out, _ = timm_export
    assert _report(out)["exported"]["top1_agreement"] == 1.0
    network = OnnxNetwork(out / ONNX_FILE)
    # The padding amounts belong to 46x46, so the graph takes nothing else.
    assert network.input_shape == (None, 3, 46, 46)
    with pytest.raises(ValueError, match="46"):
        network(torch.zeros(1, 3, 64, 64))


def test_the_exported_directory_is_preprocessed_exactly_as_the_source(same_padded_timm_dir, timm_export):
    out, photos = timm_export
    source_processor, exported_processor = (load_image_processor(d) for d in (same_padded_timm_dir, out))
    assert input_geometry(exported_processor) == input_geometry(source_processor)
    assert input_geometry(exported_processor).interpolation == "bicubic"
    images = [Image.open(path).convert("RGB") for path in sorted(photos.iterdir())]
    before, after = (batch_preprocessor(p)(images) for p in (source_processor, exported_processor))
    assert torch.equal(before, after)


def test_a_multi_label_stage1_agrees_on_every_decision_at_its_thresholds(labelled_eval, tmp_path, capsys):
    source = save_tiny_stage1(tmp_path / "stage1", ["pitting", "scratches"], [0.3, -0.2])
    (source / CALIBRATION_FILE).write_text(json.dumps({"multi_label_thresholds": [0.4, 0.6]}))
    out = tmp_path / "out"
    code, stdout, _ = _export(capsys, source, out, "--format", "onnx", "--eval_dir", labelled_eval, *FAST)
    assert code == 0, stdout
    exported = _report(out)["exported"]
    assert exported["decision_agreement"] == 1.0 and exported["thresholds"] == [0.4, 0.6]
    assert json.loads((out / CALIBRATION_FILE).read_text())["multi_label_thresholds"] == [0.4, 0.6]


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
    config = tiny_segformer_config(labels)
    config.min_area = {"pitting": 10, "crazing": 0, "scratches": 0, "patches": 0}
    directory = tmp_path_factory.mktemp("segformer")
    SegformerForSemanticSegmentation(config).save_pretrained(directory)
    SegformerImageProcessor(do_resize=False, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="module")
def steel_eval(tmp_path_factory):
    """Held-out steel strips in the Kaggle layout (train.csv + train_images/), full size."""
    from datagen.steel import write_steel

    root = tmp_path_factory.mktemp("steel")
    write_steel(root, n=2, seed=1)
    return root


def test_a_segmenter_exports_at_any_size_with_its_defect_pixels(segformer_dir, steel_eval, tmp_path, capsys):
    out = tmp_path / "seg"
    code, stdout, _ = _export(capsys, segformer_dir, out, "--format", "onnx", "--eval_dir", steel_eval, *FAST)
    assert code == 0, stdout
    report = _report(out)
    exported = report["exported"]
    assert report["dynamic_axes"] == "batch, height, width" and report["latency_input"] == "1x3x256x1600"
    assert exported["defect_pixel_agreement"] >= 0.999 and exported["eager_defect_pixels"] > 0
    assert exported["max_abs_logit_diff"] < 1e-3
    assert exported["min_areas"] == [10, 0, 0, 0]  # the served minimum areas were applied
    assert "mean_dice" in exported["dice_eager"] and "mean_dice" in exported["dice_exported"]
    # The pipeline's 512-wide tiles of a 1600-wide strip: four per strip.
    assert report["fp32"]["tiles"]["tile_size"] == [256, 512] and report["fp32"]["tiles"]["tiles"] == 8
    assert report["fp32"]["tiles"]["argmax_agreement"] >= 0.999
    network = OnnxNetwork(out / ONNX_FILE)
    assert network.input_shape == (None, 3, None, None)
    assert json.loads((out / CONFIG_FILE).read_text())["min_area"]["pitting"] == 10


def _int8_args(calibration_dir, eval_dir, variants: str) -> list:
    """The flags of an int8 export calibrated on ``calibration_dir`` with ``variants``."""
    return [
        "--format",
        "onnx",
        "--quantize",
        "int8",
        "--calibration_dir",
        calibration_dir,
        "--eval_dir",
        eval_dir,
        "--int8_variants",
        variants,
    ]


def test_int8_through_the_cli_reports_every_variant_and_keeps_one(colour_resnet_dir, colours, tmp_path, capsys):
    out = tmp_path / "int8"
    code, stdout, err = _export(
        capsys,
        colour_resnet_dir,
        out,
        *_int8_args(colours / "train", colours / "test", "minmax,minmax_float_ends"),
        # A net trained for 30 steps has near-tied logits that int8 noise flips: a floor it can meet.
        "--min_top1_agreement_int8",
        "0.75",
        *FAST,
    )
    assert code == 0, stdout + err
    report = _report(out)
    quantization = report["quantization"]
    assert [v["variant"] for v in quantization["variants"]] == ["minmax", "minmax_float_ends"]
    for variant in quantization["variants"]:
        assert {"top1_agreement", "max_abs_logit_diff", "latency_ms_onnx", "meets_floor", "settings"} <= set(variant)
        assert variant["calibration_images"] == 36 and variant["settings"]["quant_format"] == "QDQ"
    assert quantization["chosen"] in {"minmax", "minmax_float_ends"} and report["precision"] == "int8"
    assert report["fp32"]["top1_agreement"] == 1.0  # the float graph is always measured too
    graph = onnx.load(str(out / ONNX_FILE))
    assert any(node.op_type == "QuantizeLinear" for node in graph.graph.node)
    assert report["exported"]["agreement"] >= 0.75
    assert report["exported"]["accuracy_eager"] > 0.5  # the folders are its labels: it learnt something


def test_int8_calibrated_on_one_noise_image_is_refused_with_the_figures(colour_resnet_dir, colours, tmp_path, capsys):
    # Calibrated on one faint grey image, the activation ranges are far too narrow for strong
    # colours: int8 saturates and its answers collapse, which the floor must catch.
    calibration = _write_images(tmp_path / "noise", 1, scale=0.05, offset=120)
    out = tmp_path / "int8"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _export(
        capsys,
        colour_resnet_dir,
        out,
        *_int8_args(calibration, colours / "test", "minmax"),
        "--overwrite",
        *FAST,
    )
    assert code == 2
    assert "refused" in err and "minmax" in err and "without --quantize" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing replaced, nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_dynamic_quantization_is_measured_like_static(tiny_resnet_dir, labelled_eval, tmp_path, capsys):
    out = tmp_path / "dynamic"
    code, stdout, err = _export(
        capsys,
        tiny_resnet_dir,
        out,
        "--format",
        "onnx",
        "--quantize",
        "dynamic",
        "--eval_dir",
        labelled_eval,
        "--min_top1_agreement_int8",
        "0.0",
        *FAST,
    )
    assert code == 0, stdout + err
    report = _report(out)
    assert report["precision"] == "int8 weights" and report["quantization"]["chosen"] == "dynamic"


def test_a_floor_the_export_misses_refuses_it_and_writes_nothing(tiny_resnet_dir, labelled_eval, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _export(
        capsys,
        tiny_resnet_dir,
        out,
        "--format",
        "onnx",
        "--eval_dir",
        labelled_eval,
        "--min_top1_agreement_fp32",
        "1.01",
        *FAST,
    )
    assert code == 2 and "below the floor 101.00%" in err and "max_abs_logit_diff" in err
    assert not out.exists()


def test_without_held_out_images_the_export_names_eval_dir(tiny_resnet_dir, tmp_path, capsys):
    code, _, err = _export(capsys, tiny_resnet_dir, tmp_path / "out", "--format", "onnx")
    assert code == 2 and "--eval_dir" in err
    code, _, err = _export(capsys, tiny_resnet_dir, tmp_path / "out", "--format", "onnx", "--quantize", "int8")
    assert code == 2 and "--calibration_dir" in err
    assert not (tmp_path / "out").exists()


def test_without_eval_dir_the_calibration_images_not_calibrated_on_are_held_out(
    tiny_resnet_dir, colours, tmp_path, capsys
):
    out = tmp_path / "out"
    code, stdout, err = _export(
        capsys,
        tiny_resnet_dir,
        out,
        "--format",
        "onnx",
        "--quantize",
        "int8",
        "--calibration_dir",
        colours / "train",
        "--int8_variants",
        "minmax",
        "--min_top1_agreement_int8",
        "0.0",
        *FAST,
    )
    assert code == 0, stdout + err
    report = _report(out)
    # 36 images: at least 30% (11) held out, the other 25 calibrate.
    assert report["held_out"]["images"] == 11 and report["quantization"]["variants"][0]["calibration_images"] == 25
    assert "not used for calibration" in report["held_out"]["source"]


def test_a_failure_while_writing_leaves_no_destination(tiny_resnet_dir, labelled_eval, tmp_path, capsys, monkeypatch):
    from train.export import onnx_export

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx_export, "write_export_report", fail)
    with pytest.raises(OSError, match="disk full"):
        main([str(tiny_resnet_dir), str(tmp_path / "out"), "--format", "onnx", "--eval_dir", str(labelled_eval)])
    assert list(tmp_path.iterdir()) == []  # neither the destination nor a staging folder


@pytest.mark.slow
def test_the_default_model_exports_to_fp32_onnx_with_full_agreement(default_dir, tmp_path, capsys):
    from pipelines.examples import example_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in example_photos():
        shutil.copy(path, photos / path.name)
    assert len(list(photos.iterdir())) >= 4
    out = tmp_path / "default-onnx"

    code, stdout, err = _export(capsys, "default", out, "--format", "onnx", "--eval_dir", photos, *FAST)

    assert code == 0, stdout + err
    exported = _report(out)["exported"]
    assert exported["top1_agreement"] == 1.0 and exported["max_abs_logit_diff"] < 1e-3
    assert OnnxNetwork(out / ONNX_FILE).input_shape == (None, 3, 224, 224)
    geometry = input_geometry(load_image_processor(out))
    assert geometry.interpolation == "bicubic" and geometry.mean == geometry.std == (0.5, 0.5, 0.5)
    images = [Image.open(path).convert("RGB") for path in sorted(photos.iterdir())]
    before, after = (batch_preprocessor(load_image_processor(d))(images) for d in (default_dir, out))
    assert torch.equal(before, after)


def test_an_onnx_export_of_float16_weights_keeps_the_cast_note(tiny_resnet_dir, labelled_eval, tmp_path, capsys):
    source = tmp_path / "run"
    shutil.copytree(tiny_resnet_dir, source)
    (source / MODEL_CARD_FILE).write_text("# tiny\n")
    assert main([str(source), str(tmp_path / "fp16")]) == 0
    out = tmp_path / "onnx"

    code, stdout, _ = _export(capsys, tmp_path / "fp16", out, "--format", "onnx", "--eval_dir", labelled_eval, *FAST)

    assert code == 0, stdout
    # Loaded as float32 like the pipelines do, the float16 weights export without a difference.
    assert _report(out)["exported"]["top1_agreement"] == 1.0
    card = (out / MODEL_CARD_FILE).read_text()
    assert card.count("## Export") == 1
    assert "cast to float16" in card and "top-1 agreement with eager" in card


@pytest.mark.parametrize("count, stride", [(100, 5), (40, 8), (36, 6), (7, 7), (13, 1), (1, 1)])
def test_calibration_stride_divides_the_images(count, stride):
    from train.export.quantize import calibration_stride

    assert calibration_stride(count) == stride


def test_minmax_calibration_measures_every_image_not_only_the_last_chunk(tiny_resnet_onnx_dir, tmp_path):
    # The widest input is the first of 17 images: its range must reach the quantized graph's input
    # scale. (onnxruntime 1.32's CalibMaxIntermediateOutputs drops all but the last count % N images.)
    from onnx import numpy_helper

    from common.checkpoint_files import ONNX_FILE
    from common.onnx_network import INPUT_NAME
    from train.export.quantize import Variant, prepare_for_quantization, quantize

    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(17)]
    images[0] *= 40.0
    prepared = prepare_for_quantization(tiny_resnet_onnx_dir / ONNX_FILE, tmp_path / "prepared.onnx")
    figures = quantize(prepared, tmp_path / "int8.onnx", Variant("minmax"), images)
    assert figures["calibration_images"] == 17
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME)
    scale = float(initializers[node.input[1]])
    widest = float(np.abs(images[0]).max())
    assert scale * 127 >= 0.99 * widest, (scale * 127, widest)

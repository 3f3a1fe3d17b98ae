"""Grad-CAM explanations: every model family, every method, the crop geometry, the real model, defect segmentation."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.classification import ImageClassifier
from pipelines.explanation import (
    METHODS,
    ExplanationError,
    candidate_layers,
    check_guided,
    deletion_test,
    energy_near_object,
    energy_share,
    explain_defect,
    explain_prediction,
    faithfulness_sentence,
    find_target_layer,
    grown_mask,
    input_placement,
    map_to_original,
    pointing_hit,
    resolution_ceiling,
)
from pipelines.explanation import cam as cam_module
from pipelines.explanation import guided as guided_module
from pipelines.segmentation import DefectSegmenter
from tests.conftest import TINY_LABELS

LABEL_KWARGS = {"id2label": TINY_LABELS, "label2id": {v: k for k, v in TINY_LABELS.items()}}
WIDE = (90, 130)  # (height, width) of the non-square test photo


def _tiny(name: str):
    """(model, processor or None, expected CAM layer) for one family, tiny and random."""
    import transformers as tf

    vit_like = {"patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    vit_like["intermediate_size"] = 32
    timm_cfg = {"input_size": [3, 64, 64], "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bilinear"}
    timm_cfg |= {"mean": [0.5] * 3, "std": [0.5] * 3}
    if name == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **LABEL_KWARGS)
        processor = tf.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)
        return tf.ConvNextForImageClassification(config), processor, "convnext.encoder.stages.1"
    if name == "efficientnet":
        config = tf.EfficientNetConfig(
            image_size=96, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, **LABEL_KWARGS
        )
        processor = tf.EfficientNetImageProcessor(size={"height": 96, "width": 96})
        return tf.EfficientNetForImageClassification(config), processor, "efficientnet.encoder.top_activation"
    if name == "mobilenet_v2":
        config = tf.MobileNetV2Config(image_size=96, depth_multiplier=0.25, **LABEL_KWARGS)
        processor = tf.MobileNetV2ImageProcessor(size={"shortest_edge": 110}, crop_size={"height": 96, "width": 96})
        return tf.MobileNetV2ForImageClassification(config), processor, "mobilenet_v2.conv_1x1"
    if name == "vit-wide":  # a 4 x 8 token grid: not square, so sqrt(tokens) would be wrong
        config = tf.ViTConfig(image_size=[32, 64], **vit_like, **LABEL_KWARGS)
        processor = tf.ViTImageProcessor(size={"height": 32, "width": 64})
        return tf.ViTForImageClassification(config), processor, "vit.layers.0.layernorm_before"
    if name == "deit":
        config = tf.DeiTConfig(image_size=32, **vit_like, **LABEL_KWARGS)
        processor = tf.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})
        return tf.DeiTForImageClassification(config), processor, "deit.layers.0.layernorm_before"
    if name == "beit":
        config = tf.BeitConfig(image_size=32, **vit_like, **LABEL_KWARGS)
        processor = tf.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
        return tf.BeitForImageClassification(config), processor, "beit.layers.0.layernorm_before"
    if name == "swin":
        config = tf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, **LABEL_KWARGS
        )
        processor = tf.ViTImageProcessor(size={"height": 32, "width": 32})
        return tf.SwinForImageClassification(config), processor, "swin.encoder.layers.1.blocks.0.layernorm_before"
    timm_models = {
        "timm-efficientnet": ("test_efficientnet", {}, "timm_model.bn2"),
        "timm-vit": ("test_vit", {"img_size": 64}, "timm_model.blocks.5.norm1"),
        "timm-convnext": ("test_convnext", {}, "timm_model.stages.3"),
        "timm-resnet": ("test_resnet", {}, "timm_model.layer4"),
    }
    architecture, model_args, layer = timm_models[name]
    config = tf.TimmWrapperConfig(
        architecture=architecture, model_args=model_args, pretrained_cfg=timm_cfg, **LABEL_KWARGS
    )
    # The timm wrapper keeps its preprocessing in config.json; it has no processor file.
    return tf.TimmWrapperForImageClassification(config), None, layer


def _variance_preserving_init(model: torch.nn.Module) -> None:
    """He-initialised convolutions and identity BatchNorm, so random activations neither vanish nor explode.

    transformers draws EfficientNet's BatchNorm scales from N(0, 0.02), and PyTorch's default
    convolution init shrinks the signal in a 17-block MobileNet: either way the last block's
    activations, and so every CAM, come out 0 in eval mode.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()


FAMILIES = [
    "convnext",
    "efficientnet",
    "mobilenet_v2",
    "vit-wide",
    "deit",
    "beit",
    "swin",
    "timm-efficientnet",
    "timm-vit",
    "timm-convnext",
    "timm-resnet",
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Builds and saves a family's tiny checkpoint on first use; returns (directory, layer)."""
    built = {}

    def build(name):
        if name not in built:
            torch.manual_seed(0)
            model, processor, layer = _tiny(name)
            _variance_preserving_init(model)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            if processor is not None:
                processor.save_pretrained(directory)
            built[name] = (directory, layer)
        return built[name]

    return build


@pytest.fixture(scope="module")
def wide_photo():
    """A smooth random colour picture, 90 x 130: structure at several scales, not square."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))
    fine = rng.integers(-30, 30, (*WIDE, 3))
    smooth = np.asarray(coarse.resize(WIDE[::-1], Image.Resampling.BICUBIC), dtype=np.int64)
    return Image.fromarray(np.clip(smooth + fine, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def resnet(tiny_resnet_dir):
    return ImageClassifier.from_pretrained(tiny_resnet_dir)


def _assert_valid_heatmap(heatmap: np.ndarray, size=WIDE):
    assert heatmap.shape == size and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() > 0.5  # the CAM peaks at 1; resampling to the photo may miss the exact peak
    assert heatmap.std() > 0.05, "a constant heatmap explains nothing"


# ---------------------------------------------------------------------------------------------
# Every family, every method


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_a_heatmap_at_the_image_size(family, tiny_dirs, wide_photo):
    directory, layer = tiny_dirs(family)
    classifier = ImageClassifier.from_pretrained(directory)
    explanation = explain_prediction(classifier, wide_photo)
    _assert_valid_heatmap(explanation.heatmap)
    assert explanation.layer_name == layer
    top = classifier.classify(wide_photo, top_k=1).predictions[0]
    assert (explanation.target_index, explanation.target_label) == (top.index, top.label)
    assert explanation.target_score == pytest.approx(top.score, abs=1e-4)
    assert explanation.overlay.size == wide_photo.size and explanation.overlay.mode == "RGB"
    assert explanation.panels.size[0] > 3 * wide_photo.width and explanation.panels.height == wide_photo.height
    assert explanation.region_pixels is None  # a defect explanation's field


def test_resnet_from_the_shared_fixture_uses_its_last_stage(resnet, wide_photo):
    explanation = explain_prediction(resnet, wide_photo)
    assert explanation.layer_name == "resnet.encoder.stages.1"
    _assert_valid_heatmap(explanation.heatmap)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs(method, resnet, wide_photo):
    explanation = explain_prediction(resnet, wide_photo, method=method, target="washer")
    _assert_valid_heatmap(explanation.heatmap)
    assert explanation.method == method
    assert explanation.target_index == 2


@pytest.mark.parametrize("family", ["mobilenet_v2", "timm-resnet"])  # ReLU6, and ReLU in a timm wrapper
def test_pixel_detail_gives_a_heatmap_at_the_image_size(family, tiny_dirs, wide_photo):
    classifier = ImageClassifier.from_pretrained(tiny_dirs(family)[0])
    plain = explain_prediction(classifier, wide_photo, faithfulness=False)
    detailed = explain_prediction(classifier, wide_photo, guided=True)
    heatmap = detailed.heatmap  # speckled, not smooth: most pixels are near 0
    assert heatmap.shape == WIDE and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and 0.3 < heatmap.max() <= 1.0
    assert (heatmap > 0.05).mean() > 0.01, "the detail should not collapse onto a few pixels"
    assert detailed.guided and not plain.guided
    assert (detailed.target_index, detailed.layer_name) == (plain.target_index, plain.layer_name)
    # Gradients vary pixel by pixel: the product is not the upsampled CAM, and it is zero where the CAM is.
    assert not np.allclose(detailed.heatmap, plain.heatmap, atol=0.05)
    assert (detailed.heatmap[plain.heatmap == 0.0] == 0.0).all()
    assert detailed.faithfulness is not None  # the deletion test scores the map that is shown


def test_pixel_detail_leaves_the_served_model_untouched(resnet, wide_photo):
    model = resnet.model
    activations = [type(module) for module in model.modules()]
    before = resnet.classify(wide_photo, top_k=3).predictions
    explain_prediction(resnet, wide_photo, guided=True)
    assert [type(module) for module in model.modules()] == activations  # ReLUs swapped on a copy only
    assert _hooks(model) == [] and all(p.grad is None for p in model.parameters())
    assert resnet.classify(wide_photo, top_k=3).predictions == before


@pytest.mark.parametrize("family", ["vit-wide", "convnext"])
def test_pixel_detail_is_refused_without_relus(family, tiny_dirs, wide_photo):
    classifier = ImageClassifier.from_pretrained(tiny_dirs(family)[0])
    with pytest.raises(
        ExplanationError, match=r"all ReLU or ReLU6; .* has GELUActivation x\d+\. Untick 'Pixel detail'"
    ):
        explain_prediction(classifier, wide_photo, guided=True)


def test_pixel_detail_is_refused_for_networks_that_mix_in_other_activations():
    import timm

    mixed = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)  # ReLU and Hardswish
    with pytest.raises(ExplanationError, match=r"has Hardswish x\d+ besides \d+ ReLU"):
        check_guided(mixed)


def test_guided_gradients_pass_only_positive_signals_through_relus(resnet, wide_photo):
    model = resnet.model
    view = guided_module._guided_view(model)
    bare = [m for m in view.modules() if type(m) in (torch.nn.ReLU, torch.nn.ReLU6)]
    assert bare == [] and any(type(m).__name__ == "GuidedBackpropReLUasModule" for m in view.modules())
    pixel_values = resnet.preprocess([wide_photo])
    guided = guided_module._guided_gradients(model, pixel_values, 0)
    with torch.enable_grad():
        pixels = pixel_values.clone().requires_grad_(True)
        cam_module._frozen_view(model)(pixel_values=pixels).logits[0, 0].backward()
    plain = pixels.grad[0].abs().sum(dim=0).numpy()
    assert guided.shape == plain.shape and guided.max() > 0
    assert np.corrcoef(guided.ravel(), plain.ravel())[0, 1] < 0.95  # the guided ReLUs changed the signal


def test_token_grids_of_any_shape_are_laid_out(tiny_vit_dir, tiny_dirs):
    model = ImageClassifier.from_pretrained(tiny_vit_dir).model
    name, module, reshape = find_target_layer(model, input_size=(56, 112))
    assert name == "vit.layers.0.layernorm_before" and module is model.get_submodule(name)
    tokens = torch.arange(1 + 7 * 14, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 3)
    grid = reshape(tokens)
    assert grid.shape == (2, 3, 7, 14)
    assert grid[0, 0, 0, 0] == 1 and grid[0, 0, 1, 0] == 15  # class token dropped, rows of 14
    # Without an input size, the config's image_size (32 x 64 here) gives the grid's shape.
    wide_vit = ImageClassifier.from_pretrained(tiny_dirs("vit-wide")[0]).model
    assert find_target_layer(wide_vit)[2](torch.zeros(1, 1 + 4 * 8, 16)).shape == (1, 16, 4, 8)
    # DeiT's two leading tokens (class + distillation) are dropped, as its table row says.
    deit = ImageClassifier.from_pretrained(tiny_dirs("deit")[0]).model
    assert find_target_layer(deit)[2](torch.zeros(1, 2 + 16, 16)).shape == (1, 16, 4, 4)


def test_works_inside_inference_mode(resnet, wide_photo):
    expected = explain_prediction(resnet, wide_photo, faithfulness=False).heatmap
    with torch.inference_mode():
        explanation = explain_prediction(resnet, wide_photo)
    np.testing.assert_allclose(explanation.heatmap, expected, atol=1e-6)


def test_cnn_layers_need_no_reshape(resnet):
    name, _, reshape = find_target_layer(resnet.model)
    assert name == "resnet.encoder.stages.1" and reshape is None


# ---------------------------------------------------------------------------------------------
# Targets and layers


def test_target_by_index_and_by_label_agree(resnet, wide_photo):
    by_index = explain_prediction(resnet, wide_photo, target=1, faithfulness=False)
    by_label = explain_prediction(resnet, wide_photo, target="hex nut", faithfulness=False)
    assert (by_label.target_index, by_label.target_label) == (1, "hex nut")
    np.testing.assert_allclose(by_index.heatmap, by_label.heatmap, atol=1e-6)
    probabilities = resnet.probabilities(resnet.forward(resnet.preprocess([wide_photo])))[0]
    assert by_label.target_score == pytest.approx(float(probabilities[1]), abs=1e-5)
    assert by_label.faithfulness is None


@pytest.mark.parametrize(
    ("target", "message"),
    [("hex bolt", "'hex bolt'.*Did you mean 'hex nut'"), (3, "target=3 is out of range.*0 to 2"), (True, "not bool")],
)
def test_bad_target_is_named_with_the_valid_ones(resnet, wide_photo, target, message):
    with pytest.raises(ExplanationError, match=message):
        explain_prediction(resnet, wide_photo, target=target)


def test_layer_override_by_name(resnet, wide_photo):
    explanation = explain_prediction(resnet, wide_photo, layer="resnet.encoder.stages.0")
    assert explanation.layer_name == "resnet.encoder.stages.0"
    _assert_valid_heatmap(explanation.heatmap)
    assert "resnet.encoder.stages.0" in candidate_layers(resnet.model)
    assert not any(name.startswith("classifier") for name in candidate_layers(resnet.model))


def test_wrong_layer_name_lists_the_candidates(resnet, wide_photo):
    with pytest.raises(ExplanationError) as caught:
        explain_prediction(resnet, wide_photo, layer="resnet.encoder.stage.1")
    message = str(caught.value)
    assert "'resnet.encoder.stage.1' is not a module" in message
    assert "Did you mean 'resnet.encoder.stages.1'" in message
    assert "'resnet.encoder.stages.1.layers.0'" in message  # the deepest candidates are listed


def test_layer_without_a_spatial_output_is_refused(resnet, wide_photo):
    with pytest.raises(ExplanationError, match=r"outputs shape \(1, 3\), which has no spatial layout"):
        explain_prediction(resnet, wide_photo, layer="classifier.1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "gradcam+++"}, "method='gradcam\\+\\+\\+'.*gradcam, gradcam\\+\\+, hirescam"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"colormap": "rainbow-ish"}, "colormap='rainbow-ish'"),
        ({"fraction": 0.8}, "fraction=0.8"),
    ],
)
def test_bad_options_are_refused(resnet, wide_photo, options, message):
    with pytest.raises(ExplanationError, match=message):
        explain_prediction(resnet, wide_photo, **options)


# ---------------------------------------------------------------------------------------------
# Mapping the CAM back through resize and center crop


def _timm_processor():
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(
        pretrained_cfg={"input_size": [3, 32, 32], "crop_pct": 0.5, "crop_mode": "center", "interpolation": "bilinear"}
    )


def _convnext_processor():
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.5)


def _deit_processor():
    from transformers import DeiTImageProcessor

    return DeiTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 32, "width": 32})


@pytest.mark.parametrize("make_processor", [_convnext_processor, _timm_processor, _deit_processor])
def test_cam_is_mapped_back_through_the_crop(make_processor):
    """A bright spot in the photo, found in the model input and mapped back, lands on itself."""
    processor = make_processor()
    photo = np.full((*WIDE, 3), 20, dtype=np.uint8)
    photo[40:48, 70:78] = 255  # inside every crop below, off-centre in both axes
    pixel_values = processor(images=[Image.fromarray(photo)], return_tensors="pt")["pixel_values"][0]
    brightness = pixel_values.mean(0).numpy()
    cam = 0.2 + 0.8 * (brightness - brightness.min()) / (brightness.max() - brightness.min())
    placement = input_placement(processor, WIDE, cam.shape)
    heatmap = map_to_original(cam, placement, WIDE)

    spot = heatmap > 0.6
    rows, cols = np.nonzero(spot)
    assert rows.mean() == pytest.approx(43.5, abs=1.0) and cols.mean() == pytest.approx(73.5, abs=1.0)
    # A plain stretch of the crop over the whole photo would put the spot elsewhere:
    stretched = np.asarray(Image.fromarray(cam).resize(WIDE[::-1], Image.Resampling.BILINEAR)) > 0.6
    assert abs(np.nonzero(stretched)[1].mean() - 73.5) > 5
    # Outside the crop the model saw nothing, so the heatmap is 0 there and only there.
    (scale_y, scale_x), (start_y, start_x) = placement.scale, placement.start
    centres_y, centres_x = np.mgrid[: WIDE[0], : WIDE[1]] + 0.5
    inside = (
        (centres_y * scale_y >= start_y)
        & (centres_y * scale_y < start_y + cam.shape[0])
        & (centres_x * scale_x >= start_x)
        & (centres_x * scale_x < start_x + cam.shape[1])
    )
    assert 0.1 < inside.mean() < 0.9  # the crop cuts the photo
    assert (heatmap[~inside] == 0).all() and heatmap[inside].min() > 0.1


def test_convnext_crop_box_matches_the_hand_computed_one():
    # shortest edge 90 -> 64 (scale 64/90), width int(64 * 130 / 90) = 92; a 32 crop starts at (16, 30).
    placement = input_placement(_convnext_processor(), WIDE, (32, 32))
    assert placement.scale == pytest.approx((64 / 90, 92 / 130)) and placement.start == (16.0, 30.0)


def test_unknown_geometry_falls_back_to_stretching():
    placement = input_placement(SimpleNamespace(size=None), WIDE, (32, 32))
    assert placement.scale == pytest.approx((32 / 90, 32 / 130)) and placement.start == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Faithfulness


def test_sentence_reads_plainly():
    assert faithfulness_sentence(0.61, 0.03, 0.9, "tiger cat", 0.2) == (
        "Hiding the 20% of the image the heatmap marks as most important lowers the confidence in "
        "'tiger cat' by 61 points; hiding the 20% it marks as least important lowers it by 3 points, "
        "so the heatmap points at what the model really uses."
    )
    assert faithfulness_sentence(0.01, 0.2, 0.5, "gear", 0.1).endswith(
        "so the heatmap misses what the model really uses."
    )
    assert "raises it by 4 points, so this test cannot tell" in faithfulness_sentence(-0.02, -0.04, 0.9, "gear", 0.2)


def test_deletion_test_is_one_forward_of_two_images(resnet, wide_photo, monkeypatch):
    batches = []
    forward = resnet.forward

    def counting_forward(pixel_values):
        batches.append(len(pixel_values))
        return forward(pixel_values)

    monkeypatch.setattr(resnet, "forward", counting_forward)
    explanation = explain_prediction(resnet, wide_photo, target="gear", fraction=0.25)
    assert batches == [2]
    result = explanation.faithfulness
    assert result.score == pytest.approx(result.drop_most_relevant - result.drop_least_relevant)
    assert "Hiding the 25% of the image" in result.sentence and "'gear'" in result.sentence


def test_deletion_test_on_a_flat_map_says_so(resnet, wide_photo):
    pixel_values = resnet.preprocess([wide_photo])
    result = deletion_test(resnet, pixel_values, np.zeros((32, 32), np.float32), 0, 0.5, 0.2)
    assert (result.drop_most_relevant, result.score) == (0.0, 0.0) and "flat" in result.sentence


# ---------------------------------------------------------------------------------------------
# Localisation metrics (used by the benchmarks, which have the true masks)


def _square_mask(size=10, box=(2, 6)) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[0] : box[1], box[0] : box[1]] = True
    return mask


def test_energy_share_is_the_part_of_the_heatmap_on_the_mask():
    mask = _square_mask()  # 16 of 100 pixels
    heatmap = np.zeros((10, 10), dtype=np.float32)
    heatmap[3:5, 3:5] = 1.0
    assert energy_share(heatmap, mask) == 1.0
    heatmap[0, 0] = 4.0  # as much energy off the object as on it
    assert energy_share(heatmap, mask) == pytest.approx(0.5)
    assert energy_share(np.where(mask, 0.0, 1.0), mask) == 0.0


def test_uniform_and_all_zero_heatmaps_score_the_chance_level():
    mask = _square_mask()
    assert energy_share(np.full((10, 10), 0.3), mask) == pytest.approx(0.16)
    assert energy_share(np.zeros((10, 10)), mask) == pytest.approx(0.16)


def test_energy_share_refuses_mismatched_or_negative_maps():
    with pytest.raises(ValueError, match=r"same \(height, width\)"):
        energy_share(np.ones((10, 12)), _square_mask())
    with pytest.raises(ValueError, match="negative"):
        energy_share(np.full((10, 10), -1.0), _square_mask())


def test_pointing_game_asks_whether_the_peak_is_on_the_object():
    mask = _square_mask()
    heatmap = np.full((10, 10), 0.2)
    heatmap[4, 4] = 1.0
    assert pointing_hit(heatmap, mask)
    heatmap[9, 9] = 1.5
    assert not pointing_hit(heatmap, mask)
    heatmap[5, 5] = 1.5  # a tie between a pixel on the object and one off it
    assert pointing_hit(heatmap, mask)
    assert not pointing_hit(np.zeros((10, 10)), mask)  # a flat map points nowhere


def test_grown_mask_adds_a_band_of_the_given_width():
    mask = _square_mask(size=12, box=(5, 7))  # 2 x 2 in the middle
    assert grown_mask(mask, 0).sum() == 4
    assert grown_mask(mask, 1).sum() == 16 and grown_mask(mask, 2).sum() == 36  # 4x4, 6x6 squares
    assert grown_mask(mask, 1)[mask].all()


def test_energy_near_the_object_counts_the_outline_but_not_far_heat():
    mask = _square_mask(size=100, box=(40, 60))
    ring = grown_mask(mask, 3) & ~mask  # heat just outside the outline: 3 px < 3.5% of 100 px
    far = np.zeros((100, 100))
    far[:10, :10] = 1.0
    assert energy_share(ring.astype(float), mask) == 0.0
    assert energy_near_object(ring.astype(float), mask) == pytest.approx(1.0)
    assert energy_near_object(far, mask) == 0.0
    half = ring.astype(float) / ring.sum() + far / far.sum()  # equal energy near and far
    assert energy_near_object(half, mask) == pytest.approx(0.5)


def test_resolution_ceiling_is_what_a_perfect_map_at_the_grid_scores():
    mask = _square_mask(size=16, box=(4, 8))  # 16 of 256 pixels
    everywhere = np.ones((16, 16), dtype=bool)
    assert resolution_ceiling(mask, everywhere, (16, 16)) == pytest.approx(1.0)  # one cell per pixel
    assert resolution_ceiling(mask, everywhere, (1, 1)) == pytest.approx(16 / 256)  # uniform: chance
    coarse, fine = resolution_ceiling(mask, everywhere, (2, 2)), resolution_ceiling(mask, everywhere, (8, 8))
    assert 16 / 256 < coarse < fine < 1.0
    seen = np.zeros((16, 16), dtype=bool)
    seen[2:14, 2:14] = True  # a center crop: a 1 x 1 grid now spreads over the seen part only
    assert resolution_ceiling(mask, seen, (1, 1)) == pytest.approx(16 / 144)


# ---------------------------------------------------------------------------------------------
# Hooks, gradients, memory, threads


def _hooks(model):
    return [
        (name, kind)
        for name, module in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        if getattr(module, kind)
    ]


@pytest.mark.parametrize(("family", "runs"), [("resnet", 20), ("swin", 6)])
def test_many_explanations_leave_no_trace(family, runs, resnet, tiny_dirs, wide_photo):
    classifier = resnet if family == "resnet" else ImageClassifier.from_pretrained(tiny_dirs(family)[0])
    model = classifier.model
    requires_grad = [p.requires_grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):  # warm-up: first calls fill caches (colour maps, dispatch tables)
        explain_prediction(classifier, wide_photo, method="gradcam++")
    gc.collect()
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        for step in range(runs):
            explain_prediction(classifier, wide_photo, method=("gradcam++", "scorecam")[step % 2])
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
    finally:
        tracemalloc.stop()
    assert _hooks(model) == []
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert not model.training
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    # Keeping every model view alive (a deliberate leak) adds ~800 objects and ~140 kB per call.
    assert len(gc.get_objects()) - objects_before < 500
    assert traced_growth < 256 * 1024


def test_explanations_in_threads_match_and_do_not_disturb_classification(resnet, wide_photo):
    expected = explain_prediction(resnet, wide_photo, faithfulness=False).heatmap
    expected_scores = [p.score for p in resnet.classify(wide_photo, top_k=3).predictions]
    start = threading.Barrier(4)

    def explain(_):
        start.wait()
        return explain_prediction(resnet, wide_photo, faithfulness=False).heatmap

    def classify(_):
        start.wait()
        return [[p.score for p in resnet.classify(wide_photo, top_k=3).predictions] for _ in range(10)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        heatmaps = pool.map(explain, range(2))
        scores = pool.map(classify, range(2))
        heatmaps, scores = list(heatmaps), list(scores)
    for heatmap in heatmaps:
        np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    for run in scores:
        for row in run:
            assert row == pytest.approx(expected_scores, abs=1e-6)
    assert _hooks(resnet.model) == []


# ---------------------------------------------------------------------------------------------
# The real default model on real photos


@pytest.fixture(scope="module")
def default_classifier(default_dir):
    return ImageClassifier.from_pretrained(default_dir)


def _skimage_photo(name: str) -> Image.Image:
    from pipelines.examples import skimage_data_dir

    return Image.open(skimage_data_dir() / name).convert("RGB")


@pytest.mark.slow
def test_heatmap_sits_on_the_cat(default_classifier):
    """scikit-image's chelsea photo pasted onto its grass texture: the mask is exact by construction.

    The raw chelsea.png (451 x 300) is no test: the model's 224 center crop covers about
    x 94-356, y 19-281 of it, which is cat almost wall to wall, so "outside the cat" would be
    mostly the part the model never saw (0 by construction). On a 320 x 320 grass picture the
    crop keeps x, y 20-300, and the cat, shrunk to 170 x 113, fills a quarter of that view.
    """
    grass, on_cat, seen = _cat_on_grass()
    explanation = explain_prediction(default_classifier, grass)
    assert "cat" in explanation.target_label
    heatmap = explanation.heatmap
    assert heatmap[on_cat & seen].mean() > 3 * heatmap[seen & ~on_cat].mean()
    assert on_cat[np.unravel_index(heatmap.argmax(), heatmap.shape)]
    assert explanation.faithfulness.score > 0.1


def _cat_on_grass() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """The picture, the cat's pixels and the pixels inside the model's 224 center crop."""
    grass = _skimage_photo("grass.png").resize((320, 320))
    cat_box = (30, 160, 200, 273)  # left, top, right, bottom
    grass.paste(_skimage_photo("chelsea.png").resize((170, 113)), cat_box[:2])
    on_cat = np.zeros((320, 320), dtype=bool)
    on_cat[cat_box[1] : cat_box[3], cat_box[0] : cat_box[2]] = True
    seen = np.zeros_like(on_cat)
    seen[20:300, 20:300] = True  # the center crop: background the model did see
    return grass, on_cat, seen


@pytest.mark.slow
def test_pixel_detail_on_the_default_model_is_sharper_on_the_cat(default_classifier):
    """The default model's ReLU6s take guided backpropagation: the detailed map keeps to the cat."""
    grass, on_cat, seen = _cat_on_grass()
    plain = explain_prediction(default_classifier, grass, faithfulness=False)
    detailed = explain_prediction(default_classifier, grass, faithfulness=False, guided=True)
    energy = {name: e.heatmap[on_cat].sum() / e.heatmap.sum() for name, e in (("plain", plain), ("detail", detailed))}
    assert energy["detail"] > energy["plain"] > 0.5, energy
    assert detailed.heatmap[on_cat & seen].mean() > 5 * detailed.heatmap[seen & ~on_cat].mean()


@pytest.mark.slow
def test_real_photos_get_faithful_heatmaps(default_classifier):
    coffee = explain_prediction(default_classifier, _skimage_photo("coffee.png"))
    assert coffee.target_label == "espresso"
    assert coffee.cam_grid == (7, 7)  # stride 32 at 224 pixels
    assert coffee.faithfulness.drop_most_relevant > 0.5 > 0.1 > coffee.faithfulness.drop_least_relevant
    assert "points at what the model really uses" in coffee.faithfulness.sentence
    cat = explain_prediction(default_classifier, _skimage_photo("chelsea.png"), method="layercam")
    assert cat.heatmap.shape == (300, 451) and cat.layer_name == "timm_model.bn2"
    assert (cat.heatmap[:, :90] == 0).all() and (cat.heatmap[:, 360:] == 0).all()  # outside the crop


# ---------------------------------------------------------------------------------------------
# Reusing model views


def test_views_are_reused_until_the_weights_are_replaced(tiny_resnet_dir, wide_photo, monkeypatch):
    classifier = ImageClassifier.from_pretrained(tiny_resnet_dir)  # its own model, so its own views
    copies = []
    copy_view = cam_module._frozen_view
    monkeypatch.setattr(cam_module, "_frozen_view", lambda model: copies.append(model) or copy_view(model))
    first = explain_prediction(classifier, wide_photo, target=0, faithfulness=False).heatmap
    np.testing.assert_array_equal(
        explain_prediction(classifier, wide_photo, target=0, faithfulness=False).heatmap, first
    )
    assert len(copies) == 1

    classifier.model.to(torch.float64).to(torch.float32)  # same values in new tensors: the old view is stale
    np.testing.assert_allclose(explain_prediction(classifier, wide_photo, target=0, faithfulness=False).heatmap, first)
    assert len(copies) == 2

    with torch.no_grad():  # an in-place update is seen through the view that shares the storage
        classifier.model.classifier[-1].weight[0].neg_()
    flipped = explain_prediction(classifier, wide_photo, target=0, faithfulness=False).heatmap
    assert len(copies) == 2
    assert not np.allclose(flipped, first, atol=0.05)


# ---------------------------------------------------------------------------------------------
# Defect segmentation

DEFECTS = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
DEFECT_PHOTO = (72, 100)  # (height, width); not multiples of 32, so the segmenter pads to 96 x 128
DEFECT_BOX = (slice(20, 50), slice(50, 85))  # where the bright patch is


@pytest.fixture(scope="module")
def defect_photo():
    """A dark noisy plate with one bright patch."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(60, 8, (*DEFECT_PHOTO, 3))
    pixels[DEFECT_BOX] = rng.normal(210, 8, (30, 35, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def defect_dir(tmp_path_factory, defect_photo):
    """A tiny random SegFormer whose class 2 ('crazing') wins on the bright patch.

    The decode head's classifier is set by hand: background scores 0 everywhere, classes 1, 3
    and 4 have a bias of -10 (never predicted), and class 2 scores the projection of the
    fused features onto (mean on the patch - mean off it), with a bias halfway between the two
    means, so it wins in a region around the patch and nowhere else.
    """
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from tests.conftest import tiny_segformer_config

    torch.manual_seed(0)
    config = tiny_segformer_config(DEFECTS)
    model, processor = SegformerForSemanticSegmentation(config).eval(), SegformerImageProcessor()
    pixel_values, _ = DefectSegmenter(model, processor, "unsaved").preprocess(defect_photo)
    fused = {}
    hook = model.decode_head.activation.register_forward_hook(lambda module, args, out: fused.update(out=out))
    with torch.no_grad():
        model(pixel_values=pixel_values)
    hook.remove()
    features = fused["out"][0]  # (16, 24, 32): stride 4 over the 96 x 128 padded input
    on_patch = torch.zeros(features.shape[1:], dtype=torch.bool)
    on_patch[20 // 4 : 50 // 4, 50 // 4 : 85 // 4] = True
    direction = features[:, on_patch].mean(dim=1) - features[:, ~on_patch].mean(dim=1)
    score = torch.einsum("c,chw->hw", direction, features)
    middle = (score[on_patch].mean() + score[~on_patch].mean()) / 2
    with torch.no_grad():
        classifier = model.decode_head.classifier
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([0.0, -10.0, 0.0, -10.0, -10.0]))
        classifier.weight[2, :, 0, 0] = 10 * direction / (score[on_patch].mean() - middle)
        classifier.bias[2] = -10 * middle / (score[on_patch].mean() - middle)
    directory = tmp_path_factory.mktemp("tiny-defect-segformer")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def segmenter(defect_dir):
    return DefectSegmenter.from_pretrained(defect_dir)


def test_the_fixture_predicts_crazing_on_the_patch_only(segmenter, defect_photo):
    label_map = segmenter.segment(defect_photo).label_map
    assert (label_map[DEFECT_BOX] == 2).mean() > 0.7
    outside = np.ones(DEFECT_PHOTO, dtype=bool)
    outside[DEFECT_BOX] = False
    assert (label_map[outside] == 2).mean() < 0.15
    assert set(np.unique(label_map)) == {0, 2}


def test_defect_heatmap_has_the_image_size_and_sits_on_the_region(segmenter, defect_photo):
    explanation = explain_defect(segmenter, defect_photo, class_id=2)
    heatmap = explanation.heatmap
    assert heatmap.shape == DEFECT_PHOTO and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    assert (explanation.target_index, explanation.target_label) == (2, "crazing")
    assert explanation.layer_name == "decode_head.activation" and explanation.method == "gradcam"
    assert explanation.cam_grid == (24, 32)  # stride 4 over the padded 96 x 128 input
    assert 0.5 < explanation.target_score <= 1.0  # mean probability over the region it wins
    region = segmenter.segment(defect_photo).label_map == 2
    assert heatmap[region].mean() > 3 * heatmap[~region].mean()
    assert region[np.unravel_index(heatmap.argmax(), heatmap.shape)]
    assert explanation.overlay.size == defect_photo.size and explanation.panels.height == DEFECT_PHOTO[0]
    by_label = explain_defect(segmenter, defect_photo, class_id="crazing", faithfulness=False)
    np.testing.assert_allclose(by_label.heatmap, heatmap, atol=1e-6)


def test_absent_class_is_refused_with_the_classes_found(segmenter, defect_photo):
    message = r"class_id=3 \('scratches'\) was not found in this image.*classes found: 'crazing' \(class 2, \d+\.\d%"
    with pytest.raises(ExplanationError, match=message):
        explain_defect(segmenter, defect_photo, class_id="scratches")


@pytest.mark.parametrize(
    ("class_id", "message"),
    [
        (0, "class_id=0 is the background, not a defect; pick one of 1 'pitting', 2 'crazing'"),
        (5, "class_id=5 is out of range"),
        ("crazin", "Did you mean 'crazing'"),
        (2.0, "must be a class index or a label, not float"),
    ],
)
def test_bad_defect_classes_are_named_with_the_valid_ones(segmenter, defect_photo, class_id, message):
    with pytest.raises(ExplanationError, match=message):
        explain_defect(segmenter, defect_photo, class_id=class_id)


def test_tiled_and_resized_segmenters_explain_the_whole_image(defect_dir, segmenter, defect_photo):
    expected = explain_defect(segmenter, defect_photo, class_id=2, faithfulness=False).heatmap
    tiled = DefectSegmenter.from_pretrained(defect_dir, tile_width=64, tile_overlap=32)
    np.testing.assert_allclose(explain_defect(tiled, defect_photo, class_id=2, faithfulness=False).heatmap, expected)
    resized = DefectSegmenter.from_pretrained(defect_dir, resize_to=(64, 96))
    heatmap = explain_defect(resized, defect_photo, class_id=2, faithfulness=False).heatmap
    assert heatmap.shape == DEFECT_PHOTO
    assert heatmap[DEFECT_BOX].mean() > 2 * heatmap.mean()


def test_defect_explanation_counts_the_pixels_of_the_region_it_explains(defect_dir, segmenter, defect_photo):
    raw = segmenter.segment(defect_photo, min_area=0).label_map == 2  # the argmax, no minimum area
    explanation = explain_defect(segmenter, defect_photo, class_id=2, faithfulness=False)
    assert explanation.region_pixels == int(raw.sum()) > 0
    # A minimum area above that size clears the region from the served outline; the
    # explanation is still given, and its count says the region exists before min_area only.
    assert not segmenter.segment(defect_photo, min_area=int(raw.sum()) + 1).region(2).present
    # With resize_to the count is in pixels of the original image, as min_area counts them.
    resized = DefectSegmenter.from_pretrained(defect_dir, resize_to=(64, 96))
    raw_resized = resized.segment(defect_photo, min_area=0).label_map == 2
    assert explain_defect(resized, defect_photo, class_id=2, faithfulness=False).region_pixels == raw_resized.sum()


@pytest.mark.parametrize(
    ("method", "layer"),
    [("hirescam", None), ("eigencam", None), ("gradcam", "decode_head.linear_fuse"), ("gradcam", "segformer.stages.3")],
)
def test_other_methods_and_layers_give_heatmaps_at_the_image_size(segmenter, defect_photo, method, layer):
    explanation = explain_defect(segmenter, defect_photo, class_id=2, method=method, layer=layer, faithfulness=False)
    assert explanation.heatmap.shape == DEFECT_PHOTO
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() == pytest.approx(1.0)
    assert explanation.layer_name == (layer or "decode_head.activation")


def test_defect_deletion_test_is_one_forward_of_two_images(segmenter, defect_photo, monkeypatch):
    batches = []
    forward = segmenter.forward
    monkeypatch.setattr(
        segmenter, "forward", lambda pixel_values: batches.append(len(pixel_values)) or forward(pixel_values)
    )
    explanation = explain_defect(segmenter, defect_photo, class_id=2)
    assert batches == [1, 2]  # the prediction that picks the region, then the two blurred copies
    faithfulness = explanation.faithfulness
    assert faithfulness.score == pytest.approx(faithfulness.drop_most_relevant - faithfulness.drop_least_relevant)
    assert "the confidence in 'crazing'" in faithfulness.sentence


def test_defect_explanations_leave_no_trace(segmenter, defect_photo):
    model = segmenter.model
    weights = [p.detach().clone() for p in model.parameters()]
    label_map = segmenter.segment(defect_photo).label_map
    # transformers puts output-capturing hooks on SegFormer's stages at its first forward pass.
    hooks_of_transformers = _hooks(model)
    for method in ("gradcam", "gradcam++", "scorecam", "layercam"):
        explain_defect(segmenter, defect_photo, class_id=2, method=method)
    with pytest.raises(ExplanationError):
        explain_defect(segmenter, defect_photo, class_id=4)
    assert _hooks(model) == hooks_of_transformers
    (view, _), *others = cam_module._IDLE_VIEWS[model]
    assert others == []  # one view, reused by every call above,
    assert _hooks(view) == hooks_of_transformers  # though it carries transformers' hooks
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    np.testing.assert_array_equal(segmenter.segment(defect_photo).label_map, label_map)

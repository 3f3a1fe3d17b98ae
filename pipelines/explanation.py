"""Grad-CAM explanations for any classifier ``pipelines/`` can load, through ``pytorch-grad-cam``.

A CAM needs three small inputs (pytorch-grad-cam ``base_cam.py``): the layer whose activations
it reads, the class to explain, and a reshape transform that turns the layer's output into a
``(B, C, H, W)`` map. The layer and transform come from one table keyed by the model's
``config.model_type`` (or, inside a timm wrapper, the timm class); the class is the top
prediction unless the caller picks one.

The CAM is computed on the model input (after the checkpoint's own resize and crop) and then
put back where that input came from in the original image, so the heatmap lines up with the
photo the user gave. Each explanation also gets a deletion test that says in one sentence
whether the heatmap marks what the model actually relies on.

>>> from pipelines.classification import ImageClassifier
>>> from pipelines.explanation import explain_prediction
>>> classifier = ImageClassifier.from_pretrained("default")
>>> explanation = explain_prediction(classifier, "cat.jpg")  # doctest: +SKIP
>>> explanation.target_label, explanation.heatmap.shape  # doctest: +SKIP
('tiger cat', (300, 451))
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from common.image_io import load_image
from common.preprocessing import input_geometry
from pipelines.classification import ImageClassifier, ImageSource

METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    # One extra forward pass per channel of the target layer (1280 on the default model).
    "scorecam": ScoreCAM,
    # Class-agnostic: the first principal component of the activations, whatever the target.
    "eigencam": EigenCAM,
}


class ExplanationError(ValueError):
    """A bad method, target, layer or display option; the message lists the valid choices."""


@dataclass(frozen=True)
class Faithfulness:
    """Deletion test: does hiding what the heatmap marks matter more than hiding the rest?

    Drops are in probability of the target class (0.61 = 61 percentage points).
    """

    drop_most_relevant: float
    drop_least_relevant: float
    score: float
    sentence: str


@dataclass(frozen=True)
class Explanation:
    """A class activation map and the images to show it."""

    heatmap: np.ndarray
    overlay: Image.Image
    panels: Image.Image
    target_index: int
    target_label: str
    target_score: float
    method: str
    layer_name: str
    faithfulness: Faithfulness | None


# ---------------------------------------------------------------------------------------------
# Target layers


@dataclass(frozen=True)
class _LayerRule:
    """Where a family's CAM layer is and how its output is laid out.

    Attributes:
        pattern: Regex on module names; the last match in registration order (the deepest
            block, for every family below) is used.
        layout: ``"conv"`` for ``(B, C, H, W)``, ``"tokens"`` for ``(B, prefix + H*W, C)``,
            ``"channels_last"`` for ``(B, H, W, C)``. Whatever the layout, a 3-D output is read as
            tokens and a 4-D one as ``(B, C, H, W)`` unless the layout is channels-last.
        prefix: Class/distillation tokens before the patch tokens; ``None`` reads the timm
            model's ``num_prefix_tokens`` or, failing that, infers it from the token count.
    """

    pattern: str
    layout: str = "conv"
    prefix: int | None = 0


# Transformers use the last block's pre-attention norm, as pytorch-grad-cam's ViT tutorial does:
# after the final block only the class token reaches the head, so a later layer gets no gradient
# on the patch tokens. Patterns match a suffix, so they survive renames such as
# ``vit.encoder.layer.N`` -> ``vit.layers.N`` between transformers versions.
_LAYER_TABLE: dict[str, _LayerRule] = {
    # transformers config.model_type
    "resnet": _LayerRule(r"\.stages\.\d+$"),
    "convnext": _LayerRule(r"\.stages\.\d+$"),
    "convnextv2": _LayerRule(r"\.stages\.\d+$"),
    "efficientnet": _LayerRule(r"\.top_activation$"),
    "mobilenet_v2": _LayerRule(r"\.conv_1x1$"),
    "vit": _LayerRule(r"\.layernorm_before$", "tokens", 1),
    "deit": _LayerRule(r"\.layernorm_before$", "tokens", 2),  # class + distillation token
    "beit": _LayerRule(r"\.layernorm_before$", "tokens", 1),
    "swin": _LayerRule(r"\.layernorm_before$", "tokens", 0),
    # timm models inside transformers' TimmWrapper, by timm class name
    "timm:EfficientNet": _LayerRule(r"^timm_model\.bn2$"),  # conv_head + BN + activation
    "timm:ResNet": _LayerRule(r"^timm_model\.layer4$"),
    "timm:ConvNeXt": _LayerRule(r"^timm_model\.stages\.\d+$"),
    "timm:MobileNetV3": _LayerRule(r"^timm_model\.blocks\.\d+$"),  # conv_head runs after pooling
    "timm:VisionTransformer": _LayerRule(r"^timm_model\.blocks\.\d+\.norm1$", "tokens", None),
    "timm:SwinTransformer": _LayerRule(r"^timm_model\.layers\.\d+\.blocks\.\d+\.norm1$", "channels_last"),
}

# For model types the table does not know: the same shapes, tried in this order.
_STRUCTURE_RULES = (
    _LayerRule(r"\.layernorm_before$", "tokens", None),
    _LayerRule(r"\.stages\.\d+$"),
)

# Modules under these names come after global pooling: their output has no spatial layout.
_HEAD_PARTS = frozenset({"classifier", "pooler", "head", "fc", "fc_norm", "global_pool", "pre_logits"})
_CANDIDATE_TYPES = (
    torch.nn.Conv2d,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
)
_MAX_PREFIX_TOKENS = 8  # class, distillation and register tokens


def _family(model: torch.nn.Module) -> tuple[str, _LayerRule | None]:
    """The model's table key and its row (``None`` when the table has no row)."""
    model_type = getattr(model.config, "model_type", "")
    timm_model = getattr(model, "timm_model", None)
    if timm_model is None:
        return model_type, _LAYER_TABLE.get(model_type)
    for cls in type(timm_model).__mro__:  # a subclass of a known timm class has its layout
        key = f"timm:{cls.__name__}"
        if key in _LAYER_TABLE:
            return key, _LAYER_TABLE[key]
    return f"timm:{type(timm_model).__name__}", None


def _last_match(model: torch.nn.Module, pattern: str) -> str | None:
    names = [name for name, _ in model.named_modules() if name and re.search(pattern, name)]
    return names[-1] if names else None


def _default_layer(model: torch.nn.Module) -> tuple[str, _LayerRule]:
    """The table's layer for this model, else one found from its structure."""
    key, rule = _family(model)
    if rule is not None:
        name = _last_match(model, rule.pattern)
        if name is not None:
            return name, rule
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and getattr(timm_model, "feature_info", None):
        # timm lists each model's feature stages; the last one is the deepest spatial map.
        return f"timm_model.{timm_model.feature_info[-1]['module']}", _LayerRule("", "tokens", None)
    for fallback in _STRUCTURE_RULES:
        name = _last_match(model, fallback.pattern)
        if name is not None:
            return name, fallback
    raise ExplanationError(
        f"No default Grad-CAM layer for model type '{key}'. Pass layer= with one of: "
        f"{_format_candidates(candidate_layers(model))}"
    )


def candidate_layers(model: torch.nn.Module) -> list[str]:
    """Module names a user may pick as the CAM layer: convolutions, norms and blocks.

    Modules after global pooling (classifier, pooler, head) are left out, since their output
    has no spatial layout. Deeper layers come last; the last ones are the usual choice.
    """
    containers = {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential))
        for child, _ in module.named_children()
    }
    return [
        name
        for name, module in model.named_modules()
        if name
        and not _HEAD_PARTS.intersection(name.split("."))
        and (isinstance(module, _CANDIDATE_TYPES) or name in containers)
    ]


def _format_candidates(candidates: list[str], near: str | None = None, shown: int = 12) -> str:
    close = difflib.get_close_matches(near, candidates, n=3, cutoff=0.6) if near else []
    deepest = candidates[-shown:]
    text = ", ".join(repr(name) for name in deepest)
    if len(candidates) > shown:
        text = f"... {text} ({len(candidates)} in all; see candidate_layers())"
    if close:
        text = f"{text}. Did you mean {' or '.join(repr(name) for name in close)}?"
    return text


def _resolve_layer(model: torch.nn.Module, layer: str | None) -> tuple[str, _LayerRule]:
    if layer is None:
        return _default_layer(model)
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        raise ExplanationError(
            f"layer={layer!r} is not a module of this model. Valid layers: "
            f"{_format_candidates(candidate_layers(model), near=layer)}"
        )
    _, rule = _family(model)
    # The pattern is not used for an explicit layer; the family's output layout still applies.
    return layer, rule or _LayerRule("", "tokens", None)


def find_target_layer(
    model: torch.nn.Module, input_size: tuple[int, int] | None = None
) -> tuple[str, torch.nn.Module, Callable | None]:
    """The CAM layer for ``model`` and the transform that makes its output ``(B, C, H, W)``.

    Args:
        model: A transformers image classifier (``AutoModelForImageClassification``).
        input_size: ``(height, width)`` of the model input, to lay out token grids of any
            shape; ``None`` uses the size in the model's config (``image_size``, or timm's
            ``input_size``), and a square grid when there is none.

    Returns:
        ``(module name, module, reshape_transform)``; the transform is ``None`` for models
        whose layer already gives a ``(B, C, H, W)`` map.

    Raises:
        ExplanationError: The model type is unknown and its structure shows no usable layer.
    """
    name, rule = _default_layer(model)
    reshape = None if rule.layout == "conv" else _reshape_transform(model, rule, input_size or _native_size(model))
    return name, model.get_submodule(name), reshape


def _native_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The ``(height, width)`` a checkpoint was built for, if its config says."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        size = (getattr(timm_model, "pretrained_cfg", None) or {}).get("input_size")
    else:
        size = getattr(model.config, "image_size", None)
    if isinstance(size, int):
        return size, size
    return tuple(size[-2:]) if isinstance(size, (list, tuple)) and len(size) >= 2 else None


def _reshape_transform(model: torch.nn.Module, rule: _LayerRule, input_size: tuple[int, int] | None) -> Callable:
    """The rule's layout as a transform; for "conv" it still rejects outputs with no spatial layout."""
    prefix = rule.prefix
    if prefix is None:
        prefix = getattr(getattr(model, "timm_model", None), "num_prefix_tokens", None)
    return partial(_to_feature_map, layout=rule.layout, prefix=prefix, input_size=input_size)


def _to_feature_map(
    tensor: torch.Tensor, *, layout: str, prefix: int | None, input_size: tuple[int, int] | None
) -> torch.Tensor:
    """A layer's output (or its gradient) as ``(B, C, H, W)``."""
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2) if layout == "channels_last" else tensor
    if tensor.ndim == 3:
        batch, count, channels = tensor.shape
        prefix, (rows, cols) = _token_grid(count, input_size or (1, 1), prefix)
        return tensor[:, prefix:, :].reshape(batch, rows, cols, channels).permute(0, 3, 1, 2)
    raise ExplanationError(
        f"The chosen layer outputs shape {tuple(tensor.shape)}, which has no spatial layout; pick a layer "
        "with a (B, C, H, W) map or (B, tokens, C) patch tokens (see candidate_layers())."
    )


def _token_grid(count: int, input_size: tuple[int, int], prefix: int | None) -> tuple[int, tuple[int, int]]:
    """Split ``count`` tokens into leading tokens and a ``rows x cols`` patch grid.

    The grid has the input's aspect ratio (equal patch stride along both axes); the known
    prefix is tried first, then 0, 1, 2... leading tokens.
    """
    height, width = input_size
    for lead in dict.fromkeys([*([prefix] if prefix is not None else []), *range(_MAX_PREFIX_TOKENS + 1)]):
        patches = count - lead
        if patches <= 0:
            continue
        guess = max(1, round(math.sqrt(patches * height / width)))
        for rows in (guess, guess - 1, guess + 1):
            if rows > 0 and patches % rows == 0:
                stride_y, stride_x = height / rows, width / (patches // rows)
                if abs(stride_y - stride_x) <= 0.25 * max(stride_y, stride_x):
                    return lead, (rows, patches // rows)
    raise ExplanationError(
        f"Cannot lay out {count} tokens as a patch grid of a {height}x{width} input; pick a layer with a "
        "(B, C, H, W) output (see candidate_layers())."
    )


# ---------------------------------------------------------------------------------------------
# Where the model input came from in the original image


@dataclass(frozen=True)
class Placement:
    """Model-input coordinate = original coordinate * scale - start, per axis (y, x).

    Coordinates are continuous (pixel ``i`` covers ``[i, i + 1)``), as image resizing uses them.
    """

    scale: tuple[float, float]
    start: tuple[float, float]


def _shortest_edge_size(original: tuple[int, int], short: int) -> tuple[int, int]:
    """The rounding of torchvision's ``Resize(int)`` and transformers' ``default_to_square=False``."""
    height, width = original
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def _crop_start(resized: int, crop: int) -> int:
    """First resized pixel inside a center crop; negative when the crop pads the image.

    torchvision rounds the offset and transformers truncates it; they differ by half a
    resized pixel at most, so torchvision's rule (the fast preprocessing path) serves both.
    """
    if crop > resized:
        return -((crop - resized) // 2)
    return round((resized - crop) / 2.0)


def input_placement(processor, original_size: tuple[int, int], input_size: tuple[int, int]) -> Placement:
    """Where the model input lies in the original image: the inverse of resize + center crop.

    Args:
        processor: The checkpoint's image processor (timm wrapper or transformers).
        original_size: ``(height, width)`` of the image the user gave.
        input_size: ``(height, width)`` of ``pixel_values``.

    Returns:
        The placement read from ``common.preprocessing.input_geometry``. When that cannot
        describe the processor, or its sizes disagree with the actual input, the input is
        taken to cover the whole image (a stretch): slightly misplaced for a cropping
        processor, but never outside the image.
    """
    stretch = Placement(scale=(input_size[0] / original_size[0], input_size[1] / original_size[1]), start=(0.0, 0.0))
    try:
        geometry = input_geometry(processor)
    except (AttributeError, KeyError, TypeError, ValueError):
        return stretch  # a processor shape the shared reader does not know
    kind, value = geometry.resize
    if kind == "shortest_edge" and isinstance(value, int):
        resized = _shortest_edge_size(original_size, value)
    elif kind == "exact" and None not in tuple(value):
        resized = tuple(value)
    else:
        return stretch
    crop = tuple(geometry.crop) if geometry.crop else resized
    if crop != tuple(input_size):
        return stretch
    return Placement(
        scale=(resized[0] / original_size[0], resized[1] / original_size[1]),
        start=(float(_crop_start(resized[0], crop[0])), float(_crop_start(resized[1], crop[1]))),
    )


def map_to_original(cam: np.ndarray, placement: Placement, original_size: tuple[int, int]) -> np.ndarray:
    """Put a model-input map back onto the original image; 0 where the model saw nothing."""
    (scale_y, scale_x), (start_y, start_x) = placement.scale, placement.start
    height, width = original_size
    # PIL's AFFINE samples input (a*x + b*y + c, d*x + e*y + f) at each output pixel centre, in the
    # same continuous coordinates, and fills centres that land outside the input with fillcolor.
    mapped = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).transform(
        (width, height),
        Image.Transform.AFFINE,
        (scale_x, 0.0, -start_x, 0.0, scale_y, -start_y),
        resample=Image.Resampling.BILINEAR,
        fillcolor=0.0,
    )
    return np.clip(np.asarray(mapped, dtype=np.float32), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Computing the CAM


class _LogitsOnly(torch.nn.Module):
    """pytorch-grad-cam calls ``model(x)`` and expects a logits tensor back."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _frozen_view(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every weight tensor but none of the modules.

    The CAM registers hooks on its layer and back-propagates. Doing that on the shared model
    would let a concurrent ``classify`` (another Gradio thread) fire our hooks and swap its
    activations for ours, and would leave ``.grad`` on its parameters. On this view the hooks
    are private and the parameters are new ``Parameter`` objects with ``requires_grad=False``
    over the same storage, so gradients only reach the input. Copying costs ~25 ms on the
    default model (a forward pass is ~14 ms) and no weight memory.
    """
    memo: dict[int, object] = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _compute_cam(
    classifier: ImageClassifier,
    cam_class: type,
    layer_name: str,
    rule: _LayerRule,
    pixel_values: torch.Tensor,
    target_index: int | None,
) -> tuple[np.ndarray, torch.Tensor]:
    """The CAM at model-input resolution in [0, 1], and the logits of that same forward pass."""
    targets = None if target_index is None else [ClassifierOutputTarget(target_index)]
    # inference_mode(False): gradients must work even if a caller runs us under inference_mode.
    with torch.inference_mode(False):
        view = _frozen_view(classifier.model)
        reshape = _reshape_transform(view, rule, tuple(pixel_values.shape[-2:]))
        inputs = pixel_values.clone().requires_grad_(True)
        layers = [view.get_submodule(layer_name)]
        with cam_class(model=_LogitsOnly(view), target_layers=layers, reshape_transform=reshape) as cam:
            with torch.enable_grad() if cam.uses_gradients else torch.no_grad():
                try:
                    grayscale = cam(input_tensor=inputs, targets=targets)
                except IndexError as error:
                    # BaseCAM.__exit__ prints and swallows IndexError; re-raise as a type it lets through.
                    raise RuntimeError(f"Grad-CAM failed on layer '{layer_name}': {error}") from error
            logits = cam.outputs.detach()
    return np.asarray(grayscale[0], dtype=np.float32), logits


# ---------------------------------------------------------------------------------------------
# Faithfulness: a deletion test


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflected borders."""
    height, width = images.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    out = torch.nn.functional.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = torch.nn.functional.conv2d(out, rows, groups=channels)
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    return torch.nn.functional.conv2d(out, rows.transpose(-1, -2), groups=channels)


def _target_probabilities(classifier: ImageClassifier, logits: torch.Tensor, index: int) -> list[float]:
    """The target's probability in each row, calibrated as the classifier reports it."""
    return classifier.probabilities(logits)[:, index].tolist()


def _change_phrase(drop: float) -> str:
    points = round(100 * drop)
    if points > 0:
        return f"lowers {{it}} by {points} point{'s' * (points != 1)}"
    if points < 0:
        return f"raises {{it}} by {-points} point{'s' * (points != -1)}"
    return "hardly changes {it}"


def faithfulness_sentence(drop_most: float, drop_least: float, baseline: float, label: str, fraction: float) -> str:
    """One plain sentence that says what the deletion test found."""
    percent = f"{round(100 * fraction)}%"
    most = _change_phrase(drop_most).format(it=f"the confidence in '{label}'")
    least = _change_phrase(drop_least).format(it="it")
    # "Clearly" means a gap of at least a tenth of the starting confidence (and 1 point).
    margin = max(0.01, 0.1 * baseline)
    if drop_most - drop_least >= margin:
        verdict = "so the heatmap points at what the model really uses."
    elif drop_least - drop_most >= margin:
        verdict = "so the heatmap misses what the model really uses."
    else:
        verdict = "so this test cannot tell whether the heatmap shows what the model uses."
    return (
        f"Hiding the {percent} of the image the heatmap marks as most important {most}; "
        f"hiding the {percent} it marks as least important {least}, {verdict}"
    )


def deletion_test(
    classifier: ImageClassifier,
    pixel_values: torch.Tensor,
    cam: np.ndarray,
    target_index: int,
    baseline: float,
    fraction: float,
) -> Faithfulness:
    """Blur away the most and the least relevant ``fraction`` of the input; compare the drops.

    Both perturbed images go through the model as one batch of two. Removed pixels are replaced
    by a heavily blurred copy of the input rather than a constant: a constant fill leaves the
    mask's outline for the model to react to, while the blur keeps colour and removes detail
    (the concern behind ROAD, arXiv 2202.00449). pytorch-grad-cam's ROAD classes are not used:
    their imputer solves a sparse linear system per image and they run the most- and
    least-relevant orders as separate passes. Ties in the CAM (ReLU leaves many zeros) are
    broken by a blurred CAM, so the removed "least relevant" pixels form areas far from any
    activation instead of a scattering of single pixels that a blur would hardly change.
    """
    label = classifier.id2label.get(target_index, str(target_index))
    if float(cam.max() - cam.min()) < 1e-6:
        sentence = "The heatmap is flat: it marks no part of the image as more important than another."
        return Faithfulness(0.0, 0.0, 0.0, sentence)
    height, width = cam.shape
    sigma = max(height, width) / 16
    cam_tensor = torch.from_numpy(cam)[None, None]
    smooth = _gaussian_blur(cam_tensor, sigma).ravel().numpy()
    order = np.lexsort((smooth, cam.ravel()))  # ascending relevance
    count = max(1, round(fraction * cam.size))
    remove = torch.zeros(2, cam.size, dtype=torch.bool)
    remove[0, torch.from_numpy(order[-count:])] = True  # most relevant
    remove[1, torch.from_numpy(order[:count])] = True  # least relevant
    remove = remove.view(2, 1, height, width)
    blurred = _gaussian_blur(pixel_values, sigma)
    batch = torch.where(remove, blurred, pixel_values)
    without_most, without_least = _target_probabilities(classifier, classifier.forward(batch), target_index)
    drop_most, drop_least = baseline - without_most, baseline - without_least
    return Faithfulness(
        drop_most_relevant=drop_most,
        drop_least_relevant=drop_least,
        score=drop_most - drop_least,
        sentence=faithfulness_sentence(drop_most, drop_least, baseline, label, fraction),
    )


# ---------------------------------------------------------------------------------------------
# Pictures

_PANEL_MAX_HEIGHT = 512  # the three-panel view is for display; the overlay keeps full size
_PANEL_GAP = 8


def _colour(heatmap: np.ndarray, colormap) -> np.ndarray:
    return np.round(colormap(heatmap)[..., :3] * 255).astype(np.uint8)


def _panels(original: Image.Image, coloured: Image.Image, overlay: Image.Image) -> Image.Image:
    """Original | heatmap | overlay side by side, at most ``_PANEL_MAX_HEIGHT`` pixels high."""
    width, height = original.size
    if height > _PANEL_MAX_HEIGHT:
        width, height = max(1, round(width * _PANEL_MAX_HEIGHT / height)), _PANEL_MAX_HEIGHT
    canvas = Image.new("RGB", (3 * width + 2 * _PANEL_GAP, height), "white")
    for slot, picture in enumerate((original, coloured, overlay)):
        canvas.paste(picture.resize((width, height), Image.Resampling.BILINEAR), (slot * (width + _PANEL_GAP), 0))
    return canvas


# ---------------------------------------------------------------------------------------------
# Argument checks


def _method_class(method: str) -> tuple[str, type]:
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ExplanationError(f"method={method!r} is not supported; use one of {', '.join(METHODS)}")
    return key, METHODS[key]


def _target_index(classifier: ImageClassifier, target: int | str | None) -> int | None:
    num_labels = classifier.model.config.num_labels
    if target is None:
        return None
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        if 0 <= int(target) < num_labels:
            return int(target)
        raise ExplanationError(f"target={target} is out of range; this model has classes 0 to {num_labels - 1}")
    if isinstance(target, str):
        matches = [index for index, name in classifier.id2label.items() if name == target]
        if matches:
            return matches[0]
        names = list(classifier.id2label.values())
        close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
        examples = ", ".join(repr(n) for n in names[:5])
        raise ExplanationError(
            f"target={target!r} is not a class of this model (labels are matched exactly).{hint} "
            f"Labels include {examples}{' ...' if len(names) > 5 else ''}; a class index also works."
        )
    raise ExplanationError(f"target must be a class index, a label or None, not {type(target).__name__}")


def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ExplanationError(
            f"colormap={name!r} is not a matplotlib colour map; try 'jet', 'inferno', 'viridis' or 'turbo'"
        ) from None


# ---------------------------------------------------------------------------------------------
# The pipeline


def explain_prediction(
    classifier: ImageClassifier,
    image: ImageSource,
    *,
    method: str = "gradcam",
    target: int | str | None = None,
    layer: str | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    faithfulness: bool = True,
    fraction: float = 0.2,
) -> Explanation:
    """Explain one prediction of ``classifier`` with a class activation map.

    The classifier itself is never modified: the CAM runs on a frozen view of the model that
    shares its weights (see ``_frozen_view``), so explanations can run in several threads at
    once and next to ordinary classification.

    Args:
        classifier: Any classifier loaded by ``ImageClassifier.from_pretrained``.
        image: A path, bytes or a PIL image.
        method: A key of ``METHODS``.
        target: Class index or exact label to explain; ``None`` explains the top class.
        layer: Module name to read activations from (see ``candidate_layers``); ``None`` picks
            the usual layer for the model's family.
        alpha: Weight of the colour-mapped heatmap in the overlay, 0 to 1.
        colormap: A matplotlib colour map name.
        faithfulness: Run the deletion test (one extra forward pass with a batch of two).
        fraction: Share of the model input that the deletion test removes, up to 0.5.

    Returns:
        The heatmap at the original image's resolution (0 outside the part the model saw after
        cropping), its overlay, the three-panel view and, optionally, the deletion test.

    Raises:
        ExplanationError: Bad method, target, layer, alpha, colormap or fraction.
        common.image_io.ImageLoadError: The image cannot be read.

    Example:
        >>> explain_prediction(classifier, "cat.jpg", method="gradcam++").faithfulness.sentence  # doctest: +SKIP
        "Hiding the 20% of the image the heatmap marks as most important lowers the confidence in ..."
    """
    method, cam_class = _method_class(method)
    if not 0.0 <= alpha <= 1.0:
        raise ExplanationError(f"alpha={alpha} must be between 0 (photo only) and 1 (heatmap only)")
    if not 0.0 < fraction <= 0.5:
        raise ExplanationError(f"fraction={fraction} must be above 0 and at most 0.5")
    cmap = _colormap(colormap)
    target_index = _target_index(classifier, target)
    layer_name, rule = _resolve_layer(classifier.model, layer)
    rgb = load_image(image)

    pixel_values = classifier.preprocess([rgb])
    cam, logits = _compute_cam(classifier, cam_class, layer_name, rule, pixel_values, target_index)
    if target_index is None:
        target_index = int(logits[0].argmax())  # what BaseCAM explained when given no target
    baseline = _target_probabilities(classifier, logits, target_index)[0]

    original_size = (rgb.height, rgb.width)
    placement = input_placement(classifier.processor, original_size, tuple(pixel_values.shape[-2:]))
    heatmap = map_to_original(cam, placement, original_size)
    coloured = _colour(heatmap, cmap)
    overlay = Image.fromarray(
        np.round((1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * coloured).astype(np.uint8)
    )
    return Explanation(
        heatmap=heatmap,
        overlay=overlay,
        panels=_panels(rgb, Image.fromarray(coloured), overlay),
        target_index=target_index,
        target_label=classifier.id2label.get(target_index, str(target_index)),
        target_score=baseline,
        method=method,
        layer_name=layer_name,
        faithfulness=deletion_test(classifier, pixel_values, cam, target_index, baseline, fraction)
        if faithfulness
        else None,
    )

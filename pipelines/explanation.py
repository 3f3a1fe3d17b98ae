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

``explain_defect`` does the same for one defect class of a ``DefectSegmenter``: the target is
the class's score summed over the region the model paints with it.

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
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

from common.image_io import load_image
from common.preprocessing import input_geometry
from pipelines.classification import ImageClassifier, ImageSource
from pipelines.segmentation import DefectSegmenter, TileGrid

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
    """A class activation map and the images to show it.

    ``cam_grid`` is the ``(rows, columns)`` of the layer's activation map: the heatmap's real
    resolution before it is upsampled to the image (7 x 7 for the default model at 224 pixels).
    """

    heatmap: np.ndarray
    overlay: Image.Image
    panels: Image.Image
    target_index: int
    target_label: str
    target_score: float
    method: str
    layer_name: str
    faithfulness: Faithfulness | None
    cam_grid: tuple[int, int] | None = None
    guided: bool = False


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
    # SegFormer for segmentation: the decode head's fused features after its BatchNorm and ReLU,
    # i.e. what the 1x1 classifier reads. On a SegFormer-b0 trained on synthetic steel (20
    # image/class pairs) the CAM there put 0.97 of its energy inside the true defect (chance
    # 0.12) and peaked on it every time. Before the BatchNorm (linear_fuse) the activations'
    # sign is arbitrary and 6 of 20 maps came out all zero; the last encoder stage (1/32
    # resolution, blind to the shallow stages the decoder fuses in) gave 9 of 20 all-zero maps
    # and 0.18 inside the defect. The classification model has no decode head, so its last
    # encoder stage matches instead.
    "segformer": _LayerRule(r"(^decode_head\.activation|\.stages\.\d+)$"),
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


def check_layer(model: torch.nn.Module, layer: str) -> None:
    """Refuse a ``layer`` that is not a module of ``model`` before any work is done.

    Raises:
        ExplanationError: The name is unknown; the message lists valid layers, closest first.
    """
    _resolve_layer(model, layer)


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
    over the same storage, so no gradient is ever stored on a weight. Copying costs ~25 ms on
    the default model (a forward pass is ~14 ms) and no weight memory, so views are reused
    (see ``_borrowed_view``).
    """
    memo: dict[int, object] = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


# Idle views per model, for reuse: a view is borrowed by one explanation at a time, so its
# hooks stay private. Weakly keyed, so a model that is dropped takes its views with it (a view
# holds the model's tensors, never the model itself).
_IDLE_VIEWS: weakref.WeakKeyDictionary[torch.nn.Module, list[tuple[torch.nn.Module, tuple]]] = (
    weakref.WeakKeyDictionary()
)
_IDLE_VIEWS_LOCK = threading.Lock()
_MAX_IDLE_VIEWS = 4  # more concurrent explanations than this copy a view each time


def _storage_key(model: torch.nn.Module) -> tuple:
    """Which tensors the model holds now: changes when ``.to()``, ``.half()`` or a reassigned weight
    replaces them (a view would then show the old weights), not when they are updated in place."""
    return tuple((t.data_ptr(), t.dtype, t.device) for t in (*model.parameters(), *model.buffers()))


def _carries_cam_hooks(module: torch.nn.Module) -> bool:
    """Whether a hook of ours or of pytorch-grad-cam is still registered anywhere in the tree.

    Only those count: transformers adds output-capturing hooks of its own to some models on
    their first forward pass, and those belong there.
    """
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(
        hook is _start_graph_at_layer or isinstance(getattr(hook, "__self__", None), ActivationsAndGradients)
        for m in module.modules()
        for kind in kinds
        for hook in getattr(m, kind).values()
    )


@contextmanager
def _borrowed_view(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A frozen view of ``model`` for the duration of one explanation, reused across explanations."""
    key = _storage_key(model)
    view = None
    with _IDLE_VIEWS_LOCK:
        idle = _IDLE_VIEWS.setdefault(model, [])
        idle[:] = [entry for entry in idle if entry[1] == key]  # views of replaced weights are stale
        if idle:
            view = idle.pop()[0]
    if view is None:
        view = _frozen_view(model)
    try:
        yield view
    finally:
        # A view left with a CAM hook (an error between registering and removing one) is dropped.
        if not _carries_cam_hooks(view):
            with _IDLE_VIEWS_LOCK:
                idle = _IDLE_VIEWS.setdefault(model, [])
                if len(idle) < _MAX_IDLE_VIEWS:
                    idle.append((view, key))


def _start_graph_at_layer(module: torch.nn.Module, args, output):
    """Forward hook: make the CAM layer's output the root of the autograd graph.

    Every CAM method reads gradients at its layer and nowhere else, so nothing below the layer
    needs a graph: the view's weights do not require gradients and neither does the input, the
    forward up to the layer records nothing, and backward stops here instead of running
    through the whole network to the input (on the default model that is most of a forward
    pass saved). The clone keeps in-place operations after the layer legal: they are refused
    on a leaf that requires gradients.
    """
    if isinstance(output, torch.Tensor) and torch.is_grad_enabled() and not output.requires_grad:
        return output.detach().requires_grad_(True).clone()
    return None


def _run_cam(
    model: torch.nn.Module,
    cam_class: type,
    layer_name: str,
    rule: _LayerRule,
    pixel_values: torch.Tensor,
    targets: list | None,
) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """The CAM of one image at model-input resolution in [0, 1], the model output of that pass
    and the ``(rows, columns)`` of the layer's activation map.

    ``model`` may be any module whose output has ``.logits``; the CAM runs on a frozen view of
    it (see ``_frozen_view``) with private hooks that are gone when this returns.
    """
    # inference_mode(False): gradients must work even if a caller runs us under inference_mode.
    with torch.inference_mode(False), _borrowed_view(model) as view:
        reshape = _reshape_transform(view, rule, tuple(pixel_values.shape[-2:]))
        layer = view.get_submodule(layer_name)
        # Registered before the CAM's own hooks, so those see (and hook the gradient of) the new root.
        graph_root = layer.register_forward_hook(_start_graph_at_layer)
        try:
            with cam_class(model=_LogitsOnly(view), target_layers=[layer], reshape_transform=reshape) as cam:
                with torch.enable_grad() if cam.uses_gradients else torch.no_grad():
                    try:
                        grayscale = cam(input_tensor=pixel_values, targets=targets)
                    except IndexError as error:
                        # BaseCAM.__exit__ prints and swallows IndexError; re-raise as a type it lets through.
                        raise RuntimeError(f"Grad-CAM failed on layer '{layer_name}': {error}") from error
                outputs = cam.outputs.detach()
                grid = tuple(int(n) for n in cam.activations_and_grads.activations[0].shape[-2:])
        finally:
            graph_root.remove()
    return np.asarray(grayscale[0], dtype=np.float32), outputs, grid


def _compute_cam(
    classifier: ImageClassifier,
    cam_class: type,
    layer_name: str,
    rule: _LayerRule,
    pixel_values: torch.Tensor,
    target_index: int | None,
) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """The CAM at model-input resolution in [0, 1], the logits of that same forward pass, the CAM's grid."""
    targets = None if target_index is None else [ClassifierOutputTarget(target_index)]
    return _run_cam(classifier.model, cam_class, layer_name, rule, pixel_values, targets)


# ---------------------------------------------------------------------------------------------
# Pixel detail: guided backpropagation


# Where activation modules are defined; a module of these packages that is not a ReLU, a gate or
# attention is an activation guided backpropagation cannot handle (GELU, SiLU, Hardswish, ...).
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "transformers.activations", "timm.layers.activations")
_GUIDED_ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6)
# Gates (squeeze-excitation, attention weights) and outputs pass gradients through unchanged.
_GATES = (torch.nn.Sigmoid, torch.nn.Hardsigmoid, torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.MultiheadAttention)


def check_guided(model: torch.nn.Module) -> None:
    """Refuse pixel detail for a network whose activations are not all ReLU or ReLU6.

    Guided backpropagation is defined for ReLUs; on a network that mixes in GELU, SiLU or
    Hardswish it would guide some layers and not others. (A ReLU called as a function inside a
    ``forward`` cannot be swapped or seen here.)

    Raises:
        ExplanationError: Naming the other activations found and how to turn pixel detail off.
    """
    others: dict[str, int] = {}
    relus = 0
    for module in model.modules():
        if isinstance(module, _GUIDED_ACTIVATIONS):
            relus += 1
        elif type(module).__module__.startswith(_ACTIVATION_MODULES) and not isinstance(module, _GATES):
            others[type(module).__name__] = others.get(type(module).__name__, 0) + 1
    if relus and not others:
        return
    found = ", ".join(f"{name} x{count}" for name, count in sorted(others.items())) or "no activation modules"
    raise ExplanationError(
        f"pixel detail (guided backpropagation) needs a network whose activations are all ReLU or ReLU6; this "
        f"{type(model).__name__} has {found}{f' besides {relus} ReLU' if relus and others else ''}. "
        "Untick 'Pixel detail' (guided=False in Python); the plain heatmap works for every network."
    )


def _guided_view(model: torch.nn.Module) -> torch.nn.Module:
    """A private weight-sharing copy of ``model`` whose ReLUs pass back only positive gradients.

    That is guided backpropagation (Springenberg et al.), with pytorch-grad-cam's guided ReLU.
    ReLU6 (MobileNet, EfficientNet-Lite) becomes the guided ReLU followed by the same clamp, so
    the gradient is still cut where the forward pass saturated at 6.

    Raises:
        ExplanationError: See :func:`check_guided`.
    """
    check_guided(model)
    view = _frozen_view(model)
    replace_all_layer_type_recursive(view, torch.nn.ReLU, GuidedBackpropReLUasModule())
    replace_all_layer_type_recursive(
        view, torch.nn.ReLU6, torch.nn.Sequential(GuidedBackpropReLUasModule(), torch.nn.ReLU6())
    )
    return view


def _guided_gradients(model: torch.nn.Module, pixel_values: torch.Tensor, target_index: int) -> np.ndarray:
    """How strongly each input pixel drives the target logit under guided backpropagation.

    The absolute gradient summed over the colour channels, at model-input resolution. The copy
    made for it is dropped on return, so the served model never sees the swapped activations.
    """
    view = _guided_view(model)
    with torch.inference_mode(False), torch.enable_grad():
        pixels = pixel_values.detach().clone().requires_grad_(True)
        view(pixel_values=pixels).logits[0, target_index].backward()
    return pixels.grad[0].abs().sum(dim=0).float().cpu().numpy()


def _with_pixel_detail(cam: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM: the CAM (where) times the guided gradients (which pixels), scaled to [0, 1].

    The CAM keeps the map class-discriminative; the gradients give it the input's resolution,
    so on small objects far less of the heat spills onto the background around them.
    """
    detailed = np.asarray(cam, dtype=np.float32) * gradients.astype(np.float32)
    peak = float(detailed.max())
    return detailed / peak if peak > 0.0 else np.zeros_like(detailed)


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
    if _is_flat(cam):
        return _FLAT
    sigma = max(cam.shape) / 16
    batch = _deletion_batch(pixel_values, _deletion_masks(cam, fraction, sigma), sigma)
    without_most, without_least = _target_probabilities(classifier, classifier.forward(batch), target_index)
    return _faithfulness(baseline, without_most, without_least, label, fraction)


_FLAT = Faithfulness(
    0.0, 0.0, 0.0, "The heatmap is flat: it marks no part of the image as more important than another."
)


def _is_flat(cam: np.ndarray) -> bool:
    return float(cam.max() - cam.min()) < 1e-6


def _deletion_masks(cam: np.ndarray, fraction: float, sigma: float) -> torch.Tensor:
    """``(2, 1, H, W)`` booleans: the most relevant ``fraction`` of the CAM's pixels, then the least."""
    height, width = cam.shape
    smooth = _gaussian_blur(torch.from_numpy(cam)[None, None], sigma).ravel().numpy()
    order = np.lexsort((smooth, cam.ravel()))  # ascending relevance
    count = max(1, round(fraction * cam.size))
    remove = torch.zeros(2, cam.size, dtype=torch.bool)
    remove[0, torch.from_numpy(order[-count:])] = True  # most relevant
    remove[1, torch.from_numpy(order[:count])] = True  # least relevant
    return remove.view(2, 1, height, width)


def _deletion_batch(pixel_values: torch.Tensor, remove: torch.Tensor, sigma: float) -> torch.Tensor:
    """Two copies of the input with the ``remove`` pixels replaced by a heavy blur of it."""
    return torch.where(remove, _gaussian_blur(pixel_values, sigma), pixel_values)


def _faithfulness(baseline: float, without_most: float, without_least: float, label: str, fraction: float):
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


def _pictures(rgb: Image.Image, heatmap: np.ndarray, colormap, alpha: float) -> tuple[Image.Image, Image.Image]:
    """The overlay (photo blended with the colour-mapped heatmap) and the three-panel view."""
    coloured = _colour(heatmap, colormap)
    overlay = Image.fromarray(
        np.round((1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * coloured).astype(np.uint8)
    )
    return overlay, _panels(rgb, Image.fromarray(coloured), overlay)


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


def _check_alpha_and_fraction(alpha: float, fraction: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ExplanationError(f"alpha={alpha} must be between 0 (photo only) and 1 (heatmap only)")
    if not 0.0 < fraction <= 0.5:
        raise ExplanationError(f"fraction={fraction} must be above 0 and at most 0.5")


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
    guided: bool = False,
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
        guided: Multiply the CAM by guided-backpropagation gradients (Guided Grad-CAM): a
            heatmap at pixel resolution, sharper on small objects; ReLU networks only. The
            deletion test then scores this map.

    Returns:
        The heatmap at the original image's resolution (0 outside the part the model saw after
        cropping), its overlay, the three-panel view and, optionally, the deletion test.

    Raises:
        ExplanationError: Bad method, target, layer, alpha, colormap or fraction, or
            ``guided`` on a network without ReLUs.
        common.image_io.ImageLoadError: The image cannot be read.

    Example:
        >>> explain_prediction(classifier, "cat.jpg", method="gradcam++").faithfulness.sentence  # doctest: +SKIP
        "Hiding the 20% of the image the heatmap marks as most important lowers the confidence in ..."
    """
    method, cam_class = _method_class(method)
    _check_alpha_and_fraction(alpha, fraction)
    cmap = _colormap(colormap)
    target_index = _target_index(classifier, target)
    layer_name, rule = _resolve_layer(classifier.model, layer)
    if guided:
        check_guided(classifier.model)
    rgb = load_image(image)

    pixel_values = classifier.preprocess([rgb])
    cam, logits, grid = _compute_cam(classifier, cam_class, layer_name, rule, pixel_values, target_index)
    if target_index is None:
        target_index = int(logits[0].argmax())  # what BaseCAM explained when given no target
    if guided:
        cam = _with_pixel_detail(cam, _guided_gradients(classifier.model, pixel_values, target_index))
    baseline = _target_probabilities(classifier, logits, target_index)[0]

    original_size = (rgb.height, rgb.width)
    placement = input_placement(classifier.processor, original_size, tuple(pixel_values.shape[-2:]))
    heatmap = map_to_original(cam, placement, original_size)
    overlay, panels = _pictures(rgb, heatmap, cmap, alpha)
    return Explanation(
        heatmap=heatmap,
        overlay=overlay,
        panels=panels,
        target_index=target_index,
        target_label=classifier.id2label.get(target_index, str(target_index)),
        target_score=baseline,
        method=method,
        layer_name=layer_name,
        faithfulness=deletion_test(classifier, pixel_values, cam, target_index, baseline, fraction)
        if faithfulness
        else None,
        cam_grid=grid,
        guided=guided,
    )


# ---------------------------------------------------------------------------------------------
# Defect segmentation


def _defect_class(segmenter: DefectSegmenter, class_id: int | str) -> int:
    """``class_id`` as a defect class index 1..C-1, from an index or an exact label."""
    choices = ", ".join(f"{i} {segmenter.id2label.get(i, str(i))!r}" for i in range(1, segmenter.num_labels))
    if isinstance(class_id, numbers.Integral) and not isinstance(class_id, bool):
        if 1 <= int(class_id) < segmenter.num_labels:
            return int(class_id)
        if int(class_id) == 0:
            raise ExplanationError(f"class_id=0 is the background, not a defect; pick one of {choices}")
        raise ExplanationError(f"class_id={class_id} is out of range; the defect classes are {choices}")
    if isinstance(class_id, str):
        by_label = {name: index for index, name in segmenter.id2label.items()}
        if by_label.get(class_id, 0) >= 1:
            return by_label[class_id]
        close = difflib.get_close_matches(class_id, segmenter.defect_labels, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
        raise ExplanationError(
            f"class_id={class_id!r} is not a defect class of this model (labels are matched exactly).{hint} "
            f"The defect classes are {choices}."
        )
    raise ExplanationError(f"class_id must be a class index or a label, not {type(class_id).__name__}")


def _whole_image(segmenter: DefectSegmenter, rgb: Image.Image) -> tuple[torch.Tensor, TileGrid]:
    """The image as the segmenter prepares it, padded to a multiple of 32, as one ``(1, 3, H, W)`` input.

    A segmenter set up to tile is given the whole image anyway: the CAM needs the prediction
    and the gradients of one forward pass. The tiles are put back where ``preprocess`` cut
    them from (overlaps hold the same pixels), so normalising and padding stay its own.
    """
    tiles, grid = segmenter.preprocess(rgb)
    if len(grid.origins) == 1:
        return tiles, grid
    (tile_h, tile_w), (padded_h, padded_w) = grid.tile_size, grid.padded_size
    padded = torch.zeros((tiles.shape[1], padded_h, padded_w), dtype=tiles.dtype)
    for (y, x), tile in zip(grid.origins, tiles):
        padded[:, y : y + tile_h, x : x + tile_w] = tile
    return padded[None], grid


def _predicted_classes(logits: torch.Tensor, grid: TileGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel class at the padded input size, as ``DefectSegmenter.stitch`` + argmax gives it,
    and which of those pixels are image rather than padding."""
    upsampled = torch.nn.functional.interpolate(
        logits.float(), size=grid.padded_size, mode="bilinear", align_corners=False
    )
    labels = upsampled[0].argmax(dim=0)
    inside = torch.zeros(grid.padded_size, dtype=torch.bool)
    inside[: grid.model_size[0], : grid.model_size[1]] = True
    return labels, inside


def _region_at_logits_size(pixels: torch.Tensor, logits_size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask at the input size -> the logits cells that hold any of its pixels."""
    cells = torch.nn.functional.adaptive_max_pool2d(pixels[None, None].float(), logits_size)
    return cells[0, 0] > 0


def _region_probabilities(logits: torch.Tensor, class_id: int, region: torch.Tensor) -> list[float]:
    """Mean softmax probability of ``class_id`` over ``region`` (at logits size), per batch row."""
    probabilities = logits.float().softmax(dim=1)[:, class_id]
    return ((probabilities * region).sum(dim=(1, 2)) / region.sum()).tolist()


def _classes_found(segmenter: DefectSegmenter, labels: torch.Tensor, inside: torch.Tensor) -> str:
    counts = torch.bincount(labels[inside], minlength=segmenter.num_labels).tolist()
    total = int(inside.sum())
    found = [
        f"{segmenter.id2label.get(i, str(i))!r} (class {i}, {counts[i] / total:.1%} of the image)"
        for i in range(1, segmenter.num_labels)
        if counts[i]
    ]
    return "; classes found: " + ", ".join(found) if found else "; the model finds no defect in it at all"


def _cam_on_image(cam: np.ndarray, grid: TileGrid) -> np.ndarray:
    """A CAM of the padded input -> the original image: padding cropped, ``resize_to`` undone, peak 1."""
    height, width = grid.model_size
    heatmap = cam[:height, :width]
    if grid.model_size != grid.original_size:
        original_h, original_w = grid.original_size
        heatmap = np.asarray(
            Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32)).resize(
                (original_w, original_h), Image.Resampling.BILINEAR
            )
        )
    peak = float(heatmap.max())
    # The CAM was scaled to [0, 1] over the padded input; its peak may have been in the padding.
    return np.clip(heatmap / peak if peak > 0 else heatmap, 0.0, 1.0).astype(np.float32)


def defect_deletion_test(
    segmenter: DefectSegmenter,
    pixel_values: torch.Tensor,
    cam: np.ndarray,
    grid: TileGrid,
    class_id: int,
    region: torch.Tensor,
    baseline: float,
    fraction: float,
) -> Faithfulness:
    """The deletion test of ``deletion_test`` for one defect class of a segmenter.

    Blurs the most and the least relevant ``fraction`` of the image (padding excluded) and
    compares the drops of the class's mean probability over its predicted ``region``.
    """
    height, width = grid.model_size
    visible = cam[:height, :width]
    if _is_flat(visible):
        return _FLAT
    sigma = max(height, width) / 16
    remove = torch.zeros((2, 1, *pixel_values.shape[-2:]), dtype=torch.bool)
    remove[..., :height, :width] = _deletion_masks(np.ascontiguousarray(visible), fraction, sigma)
    batch = _deletion_batch(pixel_values, remove, sigma)
    without_most, without_least = _region_probabilities(segmenter.forward(batch), class_id, region)
    label = segmenter.id2label.get(class_id, str(class_id))
    return _faithfulness(baseline, without_most, without_least, label, fraction)


def explain_defect(
    segmenter: DefectSegmenter,
    image: ImageSource,
    *,
    class_id: int | str,
    method: str = "gradcam",
    layer: str | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    faithfulness: bool = True,
    fraction: float = 0.2,
) -> Explanation:
    """Explain where a segmentation model sees one defect class, with a class activation map.

    The target is pytorch-grad-cam's ``SemanticSegmentationTarget``: the sum of the class's
    logits over the region the model predicts for it (at logits resolution, 1/4 of the input
    for SegFormer), so the map answers "what made the model paint this region as this class".
    The image runs at its native size, padded to a multiple of 32 as ``DefectSegmenter``
    does; the padding is cropped off the heatmap. The predicted region is the plain argmax
    (``segment()`` without stage 1 or ``min_area``).

    Args:
        segmenter: A segmenter loaded by ``DefectSegmenter.from_pretrained``; never modified.
        image: A path, bytes or a PIL image.
        class_id: The defect class to explain: an index 1..C-1 or its exact label.
        method: A key of ``METHODS``.
        layer: Module name to read activations from (see ``candidate_layers``); ``None`` uses
            the table's layer (for SegFormer ``decode_head.activation``: the fused features
            after ``linear_fuse``, BatchNorm and ReLU; see ``_LAYER_TABLE`` for why).
        alpha: Weight of the colour-mapped heatmap in the overlay, 0 to 1.
        colormap: A matplotlib colour map name.
        faithfulness: Run the deletion test on the class's mean probability over its region
            (one extra forward pass with a batch of two).
        fraction: Share of the image that the deletion test removes, up to 0.5.

    Returns:
        The heatmap at the original image's size, its overlay and three-panel view; the target
        is the class, its score the class's mean probability over its predicted region.

    Raises:
        ExplanationError: Bad method, class, layer or option, or the class is not predicted
            anywhere in this image (the message lists the classes that are).
        common.image_io.ImageLoadError: The image cannot be read.

    Example:
        >>> segmenter = DefectSegmenter.from_pretrained("models/steel-segformer")  # doctest: +SKIP
        >>> explain_defect(segmenter, "0002cc93b.jpg", class_id="scratches").heatmap.shape  # doctest: +SKIP
        (256, 1600)
    """
    method, cam_class = _method_class(method)
    _check_alpha_and_fraction(alpha, fraction)
    cmap = _colormap(colormap)
    class_id = _defect_class(segmenter, class_id)
    label = segmenter.id2label.get(class_id, str(class_id))
    layer_name, rule = _resolve_layer(segmenter.model, layer)
    rgb = load_image(image)

    pixel_values, layout = _whole_image(segmenter, rgb)
    logits = segmenter.forward(pixel_values)
    labels, inside = _predicted_classes(logits, layout)
    pixels = (labels == class_id) & inside
    if not pixels.any():
        raise ExplanationError(
            f"class_id={class_id} ({label!r}) was not found in this image: the model predicts no pixel of it"
            f"{_classes_found(segmenter, labels, inside)}. Pick a class that was found."
        )
    region = _region_at_logits_size(pixels, tuple(logits.shape[-2:]))
    targets = [SemanticSegmentationTarget(class_id, region.numpy().astype(np.float32))]
    cam, _, cam_grid = _run_cam(segmenter.model, cam_class, layer_name, rule, pixel_values, targets)
    baseline = _region_probabilities(logits, class_id, region)[0]

    heatmap = _cam_on_image(cam, layout)
    overlay, panels = _pictures(rgb, heatmap, cmap, alpha)
    return Explanation(
        heatmap=heatmap,
        overlay=overlay,
        panels=panels,
        target_index=class_id,
        target_label=label,
        target_score=baseline,
        method=method,
        layer_name=layer_name,
        faithfulness=defect_deletion_test(segmenter, pixel_values, cam, layout, class_id, region, baseline, fraction)
        if faithfulness
        else None,
        cam_grid=cam_grid,
    )

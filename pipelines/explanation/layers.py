"""Which layer a CAM reads, and how that layer's output becomes a ``(B, C, H, W)`` map.

pytorch-grad-cam needs a target layer and a reshape transform for it (``base_cam.py``). Both
come from one table keyed by the model's ``config.model_type`` (or, inside a timm wrapper, the
timm class), with a structural fallback for families the table does not know. A user may also
name any layer ``candidate_layers`` lists; token outputs are laid out as a patch grid of the
input's aspect ratio.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from pipelines.explanation.results import ExplanationError


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

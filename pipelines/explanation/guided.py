"""Pixel detail: Guided Grad-CAM, the CAM times guided-backpropagation gradients.

The CAM says where, at the layer's coarse grid; the gradients of the input pixels say which
pixels, at the input's resolution. Guided backpropagation swaps every ReLU for
pytorch-grad-cam's guided ReLU, so it runs on a private copy of the model and only on
networks whose activations are all ReLUs (``check_guided``).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive

from pipelines.explanation.cam import _frozen_view
from pipelines.explanation.results import ExplanationError

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

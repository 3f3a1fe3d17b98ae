"""Computing a CAM with pytorch-grad-cam on any model whose output has ``.logits``.

``METHODS`` names the CAM classes a caller may pick. ``_run_cam`` runs one on a frozen view of
the model: a copy of its module tree that shares every weight but none of the hooks, so the
served model is never hooked, never given gradients and can keep classifying in other threads.
Views are costly to copy and are reused (``_borrowed_view``); the backward pass is cut short
at the CAM's layer (``_start_graph_at_layer``).
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

from pipelines.explanation.layers import _LayerRule, _reshape_transform
from pipelines.explanation.results import ExplanationError

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


def _method_class(method: str) -> tuple[str, type]:
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ExplanationError(f"method={method!r} is not supported; use one of {', '.join(METHODS)}")
    return key, METHODS[key]


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

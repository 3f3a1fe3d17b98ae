"""``explain_prediction``: a class activation map for one prediction of an ``ImageClassifier``.

The CAM is computed on the model input (after the checkpoint's own resize and crop) and put back
where that input came from in the original image (``placement``); a deletion test then says in
one sentence whether the heatmap marks what the model actually relies on (``metrics``).
"""

from __future__ import annotations

import difflib
import numbers

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from common.image_io import load_image
from pipelines.classification import ImageClassifier, ImageSource
from pipelines.explanation.cam import _run_cam
from pipelines.explanation.guided import _guided_gradients, _with_pixel_detail, check_guided
from pipelines.explanation.layers import _LayerRule, _resolve_layer
from pipelines.explanation.metrics import _target_probabilities, deletion_test
from pipelines.explanation.options import check_options
from pipelines.explanation.placement import input_placement, map_to_original
from pipelines.explanation.render import _pictures
from pipelines.explanation.results import Explanation, ExplanationError


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
    shares its weights (see ``cam._frozen_view``), so explanations can run in several threads at
    once and next to ordinary classification.

    A classifier served by ONNX Runtime is explained with its eager weights (``classifier.eager()``,
    the ``model.safetensors`` kept beside ``model.onnx``): a CAM needs the network's activations and
    gradients, and the deletion test then scores the same network the heatmap was read from.

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
    method, cam_class, cmap = check_options(method, alpha, fraction, colormap)
    classifier = classifier.eager()
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
    return Explanation(
        heatmap=heatmap,
        **_pictures(rgb, heatmap, cmap, alpha),
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

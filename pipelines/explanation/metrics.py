"""How good a heatmap is: does the model rely on what it marks, and does it sit on the object?

Faithfulness needs only the model: ``deletion_test`` (and ``defect_deletion_test`` for a
segmenter) blurs away the most and the least relevant part of the input and compares how much
the target's probability drops; the pipelines attach its result to every explanation.

Localisation needs the true object mask, so only benchmarks use it: ``energy_share`` (the part
of the heatmap on the object), ``energy_near_object`` (the same for the object grown a little),
``pointing_hit`` (the pointing game) and ``resolution_ceiling`` (what a perfect map at the CAM's
grid would score). pytorch-grad-cam keeps its metrics apart from its methods in the same way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from pipelines.classification import ImageClassifier
from pipelines.explanation.results import ExplanationError, Faithfulness
from pipelines.segmentation import DefectSegmenter, TileGrid

NEAR_FRACTION = 0.035  # "near the object": within this share of the image's shorter side


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 0.5:
        raise ExplanationError(f"fraction={fraction} must be above 0 and at most 0.5")


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


def _region_probabilities(logits: torch.Tensor, class_id: int, region: torch.Tensor) -> list[float]:
    """Mean softmax probability of ``class_id`` over ``region`` (at logits size), per batch row."""
    probabilities = logits.float().softmax(dim=1)[:, class_id]
    return ((probabilities * region).sum(dim=(1, 2)) / region.sum()).tolist()


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


def energy_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the heatmap's total on the object: ``heatmap[mask].sum() / heatmap.sum()``.

    An all-zero heatmap marks no place more than another, like a uniform one, so it scores
    what a uniform heatmap scores: the mask's share of the image (the chance level).

    Raises:
        ValueError: The heatmap and mask differ in shape, or the heatmap has negative values.
    """
    heatmap, mask = _checked(heatmap, mask)
    total = float(heatmap.sum(dtype=np.float64))
    if total <= 0.0:
        return float(mask.mean())
    return float(heatmap[mask].sum(dtype=np.float64)) / total


def grown_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` plus every pixel within ``pixels`` of it (a square neighbourhood, like a max filter)."""
    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0:
        return mask
    grown = torch.nn.functional.max_pool2d(
        torch.from_numpy(mask.astype(np.float32))[None, None], 2 * pixels + 1, stride=1, padding=pixels
    )
    return grown[0, 0].numpy() > 0.5


def energy_near_object(heatmap: np.ndarray, mask: np.ndarray, fraction: float = NEAR_FRACTION) -> float:
    """The energy share on the object grown by ``fraction`` of the image's shorter side.

    Next to :func:`energy_share` it tells blur at the object's outline (counted here) from heat
    away from the object (counted in neither).
    """
    heatmap, mask = _checked(heatmap, mask)
    return energy_share(heatmap, grown_mask(mask, round(fraction * min(mask.shape))))


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: is the heatmap's maximum reached on the object?

    Ties count as a hit when any pixel at the maximum is on the object (bilinear upsampling
    can spread the peak over a few pixels). An all-zero heatmap points nowhere: a miss.
    """
    heatmap, mask = _checked(heatmap, mask)
    peak = float(heatmap.max())
    if peak <= 0.0 or not mask.any():
        return False
    return bool(float(heatmap[mask].max()) >= peak)


def _checked(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap, mask = np.asarray(heatmap), np.asarray(mask, dtype=bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and mask {mask.shape} must have the same (height, width)")
    if heatmap.size and float(heatmap.min()) < 0.0:
        raise ValueError("heatmap has negative values; energy shares need a non-negative map (CAMs are)")
    return heatmap, mask


def resolution_ceiling(mask: np.ndarray, seen: np.ndarray, grid: tuple[int, int]) -> float:
    """The energy share of a perfect heatmap at the CAM's resolution.

    The mask is averaged over ``grid`` cells laid over the part of the image the model saw
    (``seen``), upsampled bilinearly as a CAM is, and scored with :func:`energy_share`. A grid
    as fine as the image gives 1; a 1 x 1 grid gives the mask's share of the seen part.
    """
    mask, seen = np.asarray(mask, dtype=bool), np.asarray(seen, dtype=bool)
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    if len(rows) == 0:
        return 0.0
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    window = torch.from_numpy(mask[top:bottom, left:right].astype(np.float32))[None, None]
    cells = torch.nn.functional.adaptive_avg_pool2d(window, grid)[0, 0].numpy()
    upsampled = Image.fromarray(cells).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    perfect = np.zeros(mask.shape, dtype=np.float32)
    perfect[top:bottom, left:right] = np.clip(np.asarray(upsampled), 0.0, None)
    return energy_share(perfect, mask)

"""Train a PatchCore anomaly detector on good images only.

    python -m train.datasets anomaly-steel --out data/anomaly-steel
    python -m train.anomaly_detection --train_dir data/anomaly-steel --output_dir models/steel-anomaly \\
        --validation_defect_dir data/anomaly-steel/validation

For each product: the good images are split into ``--folds`` groups and each group's patch
features are reduced to a coreset (``--coreset_ratio`` of them, kept by greedy coreset selection).
Each image is scored by the other groups' coresets, so the threshold for ``--false_reject_rate``
is fitted on the scores of every good image, none seen by the bank that scored it; the stored
memory bank is all the groups' coresets. Nothing is learnt by gradient descent, so training is
one pass of the backbone over the images.
``--validation_defect_dir`` adds metrics (image and pixel AUROC, PRO, F1, the ROC) on defective
images, which never influence the stored threshold.

The output directory is a checkpoint like the others (the backbone via ``save_pretrained``,
``anomaly.json``, ``memory_bank.safetensors``, the model card and figures) that
``pipelines.anomaly_detection.AnomalyDetector`` loads.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageClassification, HfArgumentParser

from common import anomaly_metrics
from common.anomaly_features import (
    DEFAULT_PAD,
    LayerError,
    PatchFeatureExtractor,
    check_pad,
    default_layers,
    embed_images,
    patch_vectors,
)
from common.anomaly_files import BANK_DTYPES, AnomalyConfig, ProductRule, save_anomaly_model, saves_backbone
from common.anomaly_scores import DEFAULT_SIGMA, anomaly_maps, image_scores, patch_score_grids
from common.anomaly_threshold import (
    DEFAULT_FALSE_REJECT_RATE,
    check_false_reject_rate,
    false_reject_rate,
    fit_threshold,
    normalise_scores,
)
from common.checkpoint_files import (
    ANOMALY_FILE,
    ANOMALY_MAPS_PLOT,
    ANOMALY_ONNX_FILE,
    CONFIG_FILE,
    EVAL_RESULTS_FILE,
    EXPORT_REPORT_FILE,
    PROCESSOR_FILE,
    ROC_PLOT,
    SCORE_HISTOGRAM_PLOT,
    VALIDATION_SCORES_FILE,
    WEIGHTS_FILE,
)
from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained, share_saved_weights
from common.default_model import DEFAULT_MODEL
from common.image_io import ImageLoadError, load_image
from common.preprocessing import input_geometry
from train.anomaly_detection import report
from train.anomaly_detection.coreset import coreset
from train.anomaly_detection.data import (
    ValidationSet,
    check_folds,
    find_products,
    find_validation_sets,
    load_checked_images,
    split_folds,
)
from train.data import DataError

logger = logging.getLogger("vispect.train.anomaly_detection")

PROG = "python -m train.anomaly_detection"
# Five folds: each bank sees 80% of the good images, as a 20% hold-out did, and every image is
# scored once. On bench-anomaly's 200 strips that is 200 scores for the threshold instead of 40,
# and the coreset 5x cheaper (greedy selection costs rows x kept, per group).
DEFAULT_FOLDS = 5
# Example rows in the anomaly-map figure (the worst defective and good validation images).
_MAP_EXAMPLES = 4


# The default backbone's layers: the first stride-16 block (blocks.3, 80 channels) rather than the
# last (blocks.4, 112) gave equal or better pixel AUROC on generated steel and parts in
# bench-anomaly, with a 0.05 coreset half the nearest-neighbour work: detection at about 2x the
# backbone's forward instead of 3.8x.
DEFAULT_BACKBONE_LAYERS = ("timm_model.blocks.2", "timm_model.blocks.3")


@dataclass
class DataArguments:
    train_dir: str = field(
        metadata={
            "help": "Good images: a folder of them, an MVTec product folder (train/good/), or one sub-folder "
            "per product (one memory bank each)."
        }
    )
    validation_defect_dir: str | None = field(
        default=None,
        metadata={
            "help": "Defective validation images in MVTec's test layout (<defect_type>/*.png, optional good/, "
            "masks in ../ground_truth/); reports AUROC, PRO, F1 and the ROC. Never changes the threshold."
        },
    )
    folds: int = field(
        default=DEFAULT_FOLDS,
        metadata={
            "help": "Groups the good images are split into: each group is scored by a bank of the others' "
            "coresets, and the threshold is fitted on those scores of all the good images (at least 2)."
        },
    )
    holdout_fraction: float | None = field(
        default=None, metadata={"help": "Replaced by --folds: every good image now fits the threshold."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the folds and the coresets' first patches."})


@dataclass
class ModelArguments:
    backbone: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "CNN to take patch features from: 'default' (embedded ImageNet EfficientNet-Lite0, offline), "
            "a checkpoint directory or a cached hub id of an image classifier."
        },
    )
    layers: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names to embed, shallow first (default: timm_model.blocks.2,"
            "timm_model.blocks.3 for the default backbone, else the ends of the stride-8 and stride-16 stages)."
        },
    )
    image_size: str = field(
        default="224",
        metadata={
            "help": "Network input size: N or HEIGHTxWIDTH. Steel strips: 320x160 (rows stretched, so a faint "
            "scratch along the strip spans more of them; columns averaged along it)."
        },
    )
    pad: int = field(
        default=DEFAULT_PAD,
        metadata={
            "help": "Input pixels reflected on each side before the backbone and cropped off after it, so "
            "border patches are not scored as 'border' (0 turns it off; less than half the smaller input side)."
        },
    )


@dataclass
class DetectorArguments:
    output_dir: str = field(metadata={"help": "Directory to write the detector to."})
    coreset_ratio: float = field(
        default=0.05, metadata={"help": "Share of the good patches kept in the memory bank (default 0.05)."}
    )
    false_reject_rate: float = field(
        default=DEFAULT_FALSE_REJECT_RATE, metadata={"help": "Share of good images the threshold may reject."}
    )
    sigma: float = field(default=DEFAULT_SIGMA, metadata={"help": "Gaussian smoothing of anomaly maps (input pixels)."})
    batch_size: int = field(default=8, metadata={"help": "Images per forward pass of the backbone."})
    memory_bank_dtype: str = field(
        default="float32",
        metadata={
            "help": "How the memory bank is stored: float32, or float16 for half the file (read back as float32; "
            "on the demo detector scores moved by under 2e-4 of the threshold)."
        },
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a detector already in --output_dir."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bars."})


def parse_image_size(text: str) -> list[int]:
    """``"224"`` -> [224, 224]; ``"128x800"`` -> [128, 800].

    Raises:
        DataError: naming ``--image_size`` and the value.
    """
    height, _, width = text.lower().partition("x")
    try:
        size = [int(height), int(width or height)]
    except ValueError:
        size = []
    if len(size) != 2 or min(size) < 32:
        raise DataError(
            f"--image_size {text!r} must be N or HEIGHTxWIDTH with sides of at least 32, e.g. 224 or 128x800"
        )
    return size


def check_arguments(data: DataArguments, detector: DetectorArguments) -> None:
    """Refuse bad numbers and an output directory that holds a model, before any image is read.

    Raises:
        DataError: naming the flag, the value and the fix.
    """
    try:
        check_false_reject_rate(detector.false_reject_rate)
    except ValueError as error:
        raise DataError(str(error)) from error
    if not 0.0 < detector.coreset_ratio <= 1.0:
        raise DataError(f"--coreset_ratio {detector.coreset_ratio} must be in (0, 1]; PatchCore uses 0.1")
    if detector.batch_size < 1:
        raise DataError(f"--batch_size {detector.batch_size} must be at least 1")
    if detector.memory_bank_dtype not in BANK_DTYPES:
        raise DataError(f"--memory_bank_dtype {detector.memory_bank_dtype!r} must be one of {', '.join(BANK_DTYPES)}")
    if detector.sigma < 0:
        raise DataError(f"--sigma {detector.sigma} must be 0 (no smoothing) or more; PatchCore uses 4")
    if data.holdout_fraction is not None:
        raise DataError(
            f"--holdout_fraction {data.holdout_fraction} is no longer used: every good image is scored by a bank "
            f"built without it (--folds, default {DEFAULT_FOLDS}). Remove the flag."
        )
    check_folds(data.folds)
    out = Path(detector.output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output_dir {out} is a file; give a directory")
    taken = out.is_dir() and any((out / name).exists() for name in (ANOMALY_FILE, CONFIG_FILE))
    if taken and not detector.overwrite_output_dir:
        raise DataError(
            f"--output_dir {out} already holds a model. Choose another --output_dir, or pass --overwrite_output_dir "
            "to replace it."
        )


def load_backbone(name: str):
    """The backbone model and its normalisation ``(mean, std)`` from its image processor.

    Raises:
        ModelLoadError: naming the model and the fix.
    """
    model = load_pretrained(AutoModelForImageClassification, name)
    processor = load_image_processor(name)
    geometry = input_geometry(processor)
    return model.eval(), processor, list(geometry.mean), list(geometry.std)


@dataclass
class ProductResult:
    """One product trained: its bank, rule, out-of-fold scores (normalised) and validation outcome."""

    bank: torch.Tensor
    rule: ProductRule
    holdout_scores: np.ndarray
    # Patch score grids of the good images, each from a bank built without it (raw distances).
    out_of_fold_grids: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    validation: dict[str, np.ndarray] = field(default_factory=dict)
    roc: tuple[np.ndarray, np.ndarray] | None = None
    examples: list = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)


def fit_product(
    name: str,
    files: Sequence[Path],
    extractor: PatchFeatureExtractor,
    config: AnomalyConfig,
    *,
    folds: int,
    false_reject_target: float,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
    bank_dtype: str = "float32",
) -> ProductResult:
    """Build one product's memory bank from its good images and fit its threshold on out-of-fold scores.

    Raises:
        DataError: unreadable images or mixed sizes (see ``load_checked_images``), fewer than 2 folds.
    """
    images = load_checked_images(list(files), name)
    if len(images) < 2:
        raise DataError(f"product {name!r} has {len(images)} good image(s); fitting a threshold needs at least 2")
    groups = split_folds(len(images), folds, seed)
    embed = dict(input_size=config.input_size, mean=config.mean, std=config.std, batch_size=batch_size)
    with tqdm(total=len(images), desc=f"{name}: features", unit="img", disable=not progress) as bar:
        embedding = embed_images(extractor, images, **embed, progress=bar.update)
    cores = []
    for fold, group in enumerate(tqdm(groups, desc=f"{name}: coresets", unit="fold", disable=not progress)):
        core = coreset(patch_vectors(embedding[group]), config.coreset_ratio, seed=seed + fold)
        # Rounded as it will be stored, so the threshold is fitted on the values inference reads back.
        cores.append(core.to(BANK_DTYPES[bank_dtype]).float())
    grids = torch.empty(len(images), *embedding.shape[-2:])
    for fold, group in enumerate(groups):
        others = torch.cat([core for other, core in enumerate(cores) if other != fold])
        grids[group] = patch_score_grids(embedding[group], others)
    del embedding  # the largest tensor of the run; the bank is a twentieth of it
    raw = image_scores(grids)
    threshold = fit_threshold(raw, false_reject_target)
    holdout_scores = normalise_scores(raw, threshold)
    bank = torch.cat(cores)
    rule = ProductRule(
        threshold=threshold,
        false_reject_rate=false_reject_target,
        held_out_false_reject_rate=false_reject_rate(holdout_scores),
        n_train_images=len(images),
        n_holdout_images=len(images),
        bank_size=int(bank.shape[0]),
        image_size=[images[0].height, images[0].width],
        held_out_scores=[float(score) for score in raw],
        folds=len(groups),
    )
    return ProductResult(bank=bank, rule=rule, holdout_scores=holdout_scores, out_of_fold_grids=grids)


def _load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """A 0/255 mask as a boolean array at ``size`` (h, w); all False when there is none."""
    if path is None:
        return np.zeros(size, dtype=bool)
    mask = Image.open(path).convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


def _score_images(paths, extractor, config, bank, threshold, batch_size):
    """``(normalised scores, normalised maps at the input size, images)`` of ``paths``."""
    images = []
    for path in paths:
        try:
            images.append(load_image(path))
        except ImageLoadError as error:
            raise DataError(f"--validation_defect_dir: {error}. Remove or replace the file.") from error
    if not images:
        return np.zeros(0), [], []
    embedding = embed_images(extractor, images, config.input_size, config.mean, config.std, batch_size=batch_size)
    grids = patch_score_grids(embedding, bank)
    maps = anomaly_maps(grids, config.input_size, sigma=config.sigma)
    return normalise_scores(image_scores(grids), threshold), [m / threshold for m in maps], images


def validate_product(
    name: str,
    result: ProductResult,
    validation: ValidationSet,
    training_good: Sequence[Path],
    extractor: PatchFeatureExtractor,
    config: AnomalyConfig,
    batch_size: int = 8,
) -> None:
    """Score the validation images with the stored rule; fill ``result``'s metrics, ROC and examples.

    The good side is the validation folder's ``good/`` images; only without them the training
    images' out-of-fold scores and maps stand in (rows of kind ``good (out of fold)``): their
    false-reject rate is then the fitted one by construction, and they were scored by 4/5 of the
    bank, so a reloaded detector scores them lower (they are in its bank).
    """
    threshold = result.rule.threshold
    if validation.good:
        good_paths = list(validation.good)
        good_scores, good_maps, _ = _score_images(good_paths, extractor, config, result.bank, threshold, batch_size)
        good_kind = "good"
    else:
        good_paths, good_scores, good_kind = list(training_good), result.holdout_scores, "good (out of fold)"
        maps = anomaly_maps(result.out_of_fold_grids, config.input_size, sigma=config.sigma)
        good_maps = [m / threshold for m in maps]
    bad_scores, bad_maps, bad_images = _score_images(
        validation.defective, extractor, config, result.bank, threshold, batch_size
    )
    size = tuple(config.input_size)
    bad_masks = [_load_mask(path, size) for path in validation.masks]
    result.metrics = anomaly_metrics.image_metrics(good_scores, bad_scores)
    has_masks = any(path is not None for path in validation.masks)
    masks = [np.zeros(size, bool)] * len(good_maps) + bad_masks
    result.metrics["pixel_auroc"] = anomaly_metrics.pixel_auroc(good_maps + bad_maps, masks) if has_masks else np.nan
    result.metrics["pro"] = anomaly_metrics.pro_score(good_maps + bad_maps, masks) if has_masks else np.nan
    result.metrics["n_good"] = len(good_scores)
    result.metrics["n_defective"] = len(bad_scores)
    result.validation = {"good (out of fold)": result.holdout_scores, "defective": bad_scores}
    if validation.good:
        result.validation["validation good"] = good_scores
    fpr, tpr, _ = anomaly_metrics.image_roc(good_scores, bad_scores)
    result.roc = (fpr, tpr)
    result.rows = [(name, str(p), good_kind, f"{s:.6f}") for p, s in zip(good_paths, good_scores)] + [
        (name, str(p), kind, f"{s:.6f}")
        for p, kind, s in zip(validation.defective, validation.defect_types, bad_scores)
    ]
    worst = np.argsort(-bad_scores)[: _MAP_EXAMPLES - 1]
    result.examples = [
        (
            f"{name}: {validation.defect_types[i]} {validation.defective[i].name} ({bad_scores[i]:.2f})",
            np.asarray(bad_images[i].resize((size[1], size[0]))),
            bad_maps[i],
            bad_masks[i],
        )
        for i in worst
    ]
    if len(good_scores):
        top = int(np.argmax(good_scores))
        result.examples.append(
            (
                f"{name}: worst good {Path(good_paths[top]).name} ({good_scores[top]:.2f})",
                np.asarray(load_image(good_paths[top]).resize((size[1], size[0]))),
                good_maps[top],
                None,
            )
        )


def _write_report(
    out: Path, results: dict[str, ProductResult], config: AnomalyConfig, command: str, bank_dtype: str = "float32"
) -> list[str]:
    figures = []
    histograms = {name: (r.validation or {"good (out of fold)": r.holdout_scores}) for name, r in results.items()}
    report.plot_score_histogram(histograms, out / SCORE_HISTOGRAM_PLOT)
    figures.append(SCORE_HISTOGRAM_PLOT)
    validated = {name: r for name, r in results.items() if r.metrics}
    if validated:
        report.plot_roc({n: (*r.roc, r.metrics["image_auroc"]) for n, r in validated.items()}, out / ROC_PLOT)
        report.plot_anomaly_maps([e for r in validated.values() for e in r.examples], out / ANOMALY_MAPS_PLOT)
        figures += [ROC_PLOT, ANOMALY_MAPS_PLOT]
        with open(out / VALIDATION_SCORES_FILE, "w") as handle:
            handle.write("product,path,kind,score\n")
            for r in validated.values():
                handle.writelines(",".join(row) + "\n" for row in r.rows)
        flat = {f"{n}/{k}" if len(validated) > 1 else k: v for n, r in validated.items() for k, v in r.metrics.items()}
        (out / EVAL_RESULTS_FILE).write_text(json.dumps(flat, indent=2) + "\n")
    settings = {
        "backbone": config.backbone,
        "layers": ", ".join(config.layers),
        "input size (h x w)": f"{config.input_size[0]} x {config.input_size[1]}",
        "reflect padding (input pixels a side)": config.pad,
        "coreset ratio": config.coreset_ratio,
        "memory bank stored as": bank_dtype,
        "anomaly map smoothing (sigma, input pixels)": config.sigma,
    }
    report.write_model_card(
        out,
        command=command,
        backbone=config.backbone,
        settings=settings,
        products={name: vars(r.rule) for name, r in results.items()},
        metrics={name: r.metrics for name, r in validated.items()},
        figures=figures,
        backbone_saved=saves_backbone(config.backbone),
    )
    return figures


def train_detector(
    data: DataArguments, model_args: ModelArguments, detector: DetectorArguments, command: str
) -> dict[str, ProductResult]:
    """Everything ``main`` does, raising instead of exiting (tests and notebooks call this).

    Raises:
        DataError: bad arguments or data; ModelLoadError: the backbone cannot be loaded;
        LayerError: ``--layers`` names a module the backbone does not have.
    """
    check_arguments(data, detector)
    input_size = parse_image_size(model_args.image_size)
    try:
        check_pad(model_args.pad, input_size)
    except ValueError as error:
        raise DataError(
            f"--pad {model_args.pad} (--image_size {model_args.image_size}): {error}; {DEFAULT_PAD} is the default"
        ) from error
    products = find_products(data.train_dir)
    validation = find_validation_sets(data.validation_defect_dir, list(products)) if data.validation_defect_dir else {}
    torch.manual_seed(data.seed)
    model, processor, mean, std = load_backbone(model_args.backbone)
    layers = [name.strip() for name in model_args.layers.split(",") if name.strip()] if model_args.layers else None
    if layers is None and model_args.backbone == DEFAULT_MODEL:
        layers = list(DEFAULT_BACKBONE_LAYERS)
    extractor = PatchFeatureExtractor(model, layers or default_layers(model), pad=model_args.pad)
    try:  # one blank image: a pad that is not a whole number of cells is refused before any image is read
        extractor(torch.zeros(1, 3, *input_size))
    except ValueError as error:
        raise DataError(f"--pad {model_args.pad}: {error}") from error
    config = AnomalyConfig(
        backbone=model_args.backbone,
        layers=extractor.layers,
        input_size=input_size,
        mean=mean,
        std=std,
        coreset_ratio=detector.coreset_ratio,
        sigma=detector.sigma,
        pad=model_args.pad,
    )
    results = {}
    for name, files in products.items():
        started = time.perf_counter()
        results[name] = fit_product(
            name,
            files,
            extractor,
            config,
            folds=data.folds,
            false_reject_target=detector.false_reject_rate,
            seed=data.seed,
            batch_size=detector.batch_size,
            progress=not detector.no_progress,
            bank_dtype=detector.memory_bank_dtype,
        )
        logger.info(
            "%s: memory bank of %d patches in %.1f s", name, results[name].bank.shape[0], time.perf_counter() - started
        )
        if name in validation:
            validate_product(name, results[name], validation[name], files, extractor, config, detector.batch_size)
        config.products[name] = results[name].rule
    extractor.remove_hooks()
    out = Path(detector.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # An earlier run's validation (or backbone) must not pass for this one's.
    # An exported graph (train.export) embeds the old features: the new bank must not be served by it.
    reports = (
        ROC_PLOT,
        ANOMALY_MAPS_PLOT,
        VALIDATION_SCORES_FILE,
        EVAL_RESULTS_FILE,
        ANOMALY_ONNX_FILE,
        EXPORT_REPORT_FILE,
    )
    for name in (*reports, CONFIG_FILE, WEIGHTS_FILE, PROCESSOR_FILE):
        (out / name).unlink(missing_ok=True)
    if saves_backbone(config.backbone):
        # The backbone goes in whole (a few MB more than the hooked layers need) so the directory is a
        # normal checkpoint: offline, self-contained, and loaded by the same code as every model.
        model.save_pretrained(out, safe_serialization=True)
        share_saved_weights(out)
        processor.save_pretrained(out)
    # The default backbone is not copied: it is installed with the project (common.anomaly_files).
    banks = {name: r.bank for name, r in results.items()}
    save_anomaly_model(out, config, banks, dtype=detector.memory_bank_dtype)
    _write_report(out, results, config, command, detector.memory_bank_dtype)
    return results


def parse_args(argv: Sequence[str]) -> tuple[DataArguments, ModelArguments, DetectorArguments]:
    """Flags, or a single ``.json`` file holding them all."""
    parser = HfArgumentParser((DataArguments, ModelArguments, DetectorArguments), prog=PROG)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train, write the detector, print where it went and its thresholds."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data, model_args, detector = parse_args(argv)
    command = f"{PROG} {shlex.join(argv)}"
    try:
        results = train_detector(data, model_args, detector, command)
    except (DataError, ModelLoadError, LayerError) as error:
        sys.exit(f"error: {error}")
    for name, result in results.items():
        line = f"{name}: {result.rule.bank_size} patches, threshold {result.rule.threshold:.4f}"
        if result.metrics:
            line += (
                f", image AUROC {result.metrics['image_auroc']:.3f}, pixel AUROC {result.metrics['pixel_auroc']:.3f}"
            )
        print(line)
    print(f"wrote the anomaly detector to {detector.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

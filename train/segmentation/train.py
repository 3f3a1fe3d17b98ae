"""Train a defect segmenter (SegFormer or any AutoModelForSemanticSegmentation) with the Trainer.

    python -m train.datasets steel --out data/steel --n 600
    python -m train.segmentation.train --data_dir data/steel --model_name_or_path b0 \\
        --output_dir models/steel-segformer --max_steps 1500

``--model_name_or_path`` takes a checkpoint directory, a hub id, or a SegFormer size
(``b0`` ... ``b2``) to start from random weights, which is what works offline. Training sees
random crops (``--crop_size``) flipped jointly with their masks; validation scores whole
images with Severstal's Dice. The output directory is a checkpoint that
``pipelines.segmentation`` and the app's Segment tab load as it is.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers import (
    AutoModelForSemanticSegmentation,
    EarlyStoppingCallback,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    TrainingArguments,
    set_seed,
)

from common.checkpoint_files import INFERENCE_RESIZE_KEY, MODEL_CARD_FILE, PREDICTIONS_PLOT, TRAINING_CURVES_PLOT
from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained, share_saved_weights
from common.image_io import load_image
from common.segmentation_rules import forget_min_areas
from common.segmentation_scores import IGNORE_INDEX, segmentation_metrics
from common.training_progress import CHECKING_DATA, EVALUATING, WRITING_REPORT
from train import progress, report
from train.arguments import ArgumentsError, check_output_dir, parse_script_args
from train.data import DataError
from train.segmentation import data as seg
from train.segmentation.postprocessing import describe_min_areas, record_min_areas
from train.trainer import VispectTrainer

logger = logging.getLogger("vispect.train.segmentation")

# SegFormer's published encoder sizes (Xie et al., 2021), for training from random weights.
SEGFORMER_SIZES = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="b0", metadata={"help": "A SegFormer size (b0, b1, b2: random init), a checkpoint dir or a hub id."}
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None, metadata={"help": "Kaggle layout: train.csv + train_images/ (or the CSV itself)."}
    )
    mask_dir: str | None = field(default=None, metadata={"help": "Folder with images/ and masks/ (class-index PNGs)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset with image and mask columns."})
    image_column_name: str = field(default="image", metadata={"help": "Hub dataset image column."})
    mask_column_name: str = field(default="mask", metadata={"help": "Hub dataset mask column."})
    validation_fraction: float = field(default=0.15, metadata={"help": "Images held out for validation."})
    crop_size: str = field(default="256x512", metadata={"help": "Training crop HEIGHTxWIDTH (multiples of 32)."})
    resize_to: str | None = field(
        default=None,
        metadata={
            "help": "Resize every image (and mask) to HEIGHTxWIDTH before cropping, e.g. 128x800 to train at half "
            "resolution; saved in the processor so inference resizes the same way. Default: native resolution."
        },
    )
    defect_crop_probability: float = field(
        default=0.5,
        metadata={
            "help": "Chance that a training crop is placed over a defect (of a class picked uniformly among those "
            "in the image) instead of anywhere; defects cover a few percent of a strip."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation images."})

    def __post_init__(self):
        if sum(bool(x) for x in (self.data_dir, self.mask_dir, self.dataset_name)) != 1:
            raise ValueError("Give exactly one data source: --data_dir, --mask_dir or --dataset_name.")
        self.crop  # noqa: B018 - validate early
        if not 0.0 <= self.defect_crop_probability <= 1.0:
            raise ValueError(f"--defect_crop_probability must be in [0, 1], got {self.defect_crop_probability}.")

    @property
    def crop(self) -> tuple[int, int]:
        return _size(self.crop_size, "--crop_size")

    @property
    def resize(self) -> tuple[int, int] | None:
        return None if self.resize_to is None else _size(self.resize_to, "--resize_to")


def _size(text: str, flag: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) % 32 == 0 and int(width) % 32 == 0):
        raise ValueError(f"{flag} must be HEIGHTxWIDTH in multiples of 32, like 256x512; got {text!r}.")
    return int(height), int(width)


@dataclass
class RecipeArguments:
    loss: str = field(default="ce_dice", metadata={"help": "'ce' or 'ce_dice' (cross-entropy plus soft Dice)."})
    dice_weight: float = field(default=1.0, metadata={"help": "Weight of the Dice term in 'ce_dice'."})
    balance_classes: bool = field(
        default=False,
        metadata={
            "help": "Draw clean images and images of each defect class equally often (an image with several "
            "classes counts for its rarest), so a rare class is not seen a few dozen times in all."
        },
    )
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Evaluations without improvement."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished model in --output_dir."})

    def __post_init__(self):
        if self.loss not in {"ce", "ce_dice"}:
            raise ValueError(f"--loss must be 'ce' or 'ce_dice', got {self.loss!r}.")


SCRIPT_DEFAULTS = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "mean_dice",
    "greater_is_better": True,
    "save_total_limit": 2,
    "report_to": "none",
    "remove_unused_columns": False,
    "learning_rate": 1e-3,
    "num_train_epochs": 20,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 4,
    "ddp_find_unused_parameters": False,
}


def parse_args(argv: list[str] | None = None):
    """Flags (or one .json file) -> (model, data, recipe, training) argument dataclasses."""
    return parse_script_args(
        (ModelArguments, DataArguments, RecipeArguments, TrainingArguments),
        SCRIPT_DEFAULTS,
        argv,
        prog="python -m train.segmentation.train",
    )


def load_data(data_args: DataArguments, seed: int) -> seg.SegmentationData:
    if data_args.data_dir:
        data = seg.load_kaggle(Path(data_args.data_dir))
    elif data_args.mask_dir:
        data = seg.load_mask_folders(Path(data_args.mask_dir))
    else:
        data = seg.load_hub_segmentation(
            data_args.dataset_name, image_column=data_args.image_column_name, mask_column=data_args.mask_column_name
        )
    if "validation" not in data.splits:
        data = seg.split_by_image(data, data_args.validation_fraction, seed)
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            data.splits[name] = data.splits[name].shuffle(seed=seed).select(range(min(limit, len(data.splits[name]))))
    return data


def build_model(name: str, id2label: dict[int, str]):
    """A segmentation model with ``id2label`` classes and its processor."""
    label2id = {label: index for index, label in id2label.items()}
    if name in SEGFORMER_SIZES:
        config = SegformerConfig(
            **SEGFORMER_SIZES[name],
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            semantic_loss_ignore_index=IGNORE_INDEX,
        )
        # No resize: the pipeline runs at native resolution, padded to a multiple of 32.
        return SegformerForSemanticSegmentation(config), SegformerImageProcessor(do_resize=False)
    model = load_pretrained(
        AutoModelForSemanticSegmentation,
        name,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
    )
    # Minimum areas belong to the weights they were fitted on; training refits the segmenter-alone
    # set, and a stale two-stage set would otherwise be served with the new weights.
    forget_min_areas(model.config)
    return model, load_image_processor(name)


class DefectBiasedCrop:
    """A random crop that, with probability ``p``, is placed so that it holds a defect.

    The defect class is drawn uniformly among the classes in the mask, then one of its
    pixels, so a small rare class (pitting, crazing) is sampled as often as the large common
    ones. Otherwise, and for images without defects, it is ``v2.RandomCrop``.
    """

    def __init__(self, size: tuple[int, int], p: float):
        self.size, self.p = size, p
        self.random_crop = v2.RandomCrop(
            size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        )

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        (height, width), (crop_h, crop_w) = mask.shape[-2:], self.size
        if height >= crop_h and width >= crop_w and torch.rand(()) < self.p:
            classes = [c for c in mask.unique().tolist() if c not in (0, IGNORE_INDEX)]
            if classes:
                chosen = classes[torch.randint(len(classes), ()).item()]
                ys, xs = torch.nonzero(mask == chosen, as_tuple=True)
                pixel = torch.randint(len(ys), ()).item()
                top = _window_start(ys[pixel].item(), crop_h, height)
                left = _window_start(xs[pixel].item(), crop_w, width)
                return v2.functional.crop(image, top, left, crop_h, crop_w), v2.functional.crop(
                    mask, top, left, crop_h, crop_w
                )
        return self.random_crop(image, mask)


def _window_start(position: int, window: int, extent: int) -> int:
    """A random start for a window of ``window`` pixels inside ``extent`` that covers ``position``."""
    low, high = max(0, position - window + 1), min(position, extent - window)
    return int(torch.randint(low, high + 1, ()).item())


def joint_transforms(
    processor, crop: tuple[int, int], resize: tuple[int, int] | None = None, defect_crop_probability: float = 0.0
):
    """(train, eval) functions for ``set_transform``: image and mask change together.

    With ``resize``, images are resized bilinearly and masks by nearest neighbour (v2 picks
    the right filter per tv_tensor type), in training and evaluation alike.
    """
    normalise = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                 v2.Normalize(list(processor.image_mean), list(processor.image_std))]  # fmt: skip
    if resize is not None:
        normalise.insert(0, v2.Resize(list(resize), antialias=True))
    train = v2.Compose([
        *([v2.Resize(list(resize), antialias=True)] if resize else []),
        DefectBiasedCrop(crop, defect_crop_probability),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        *normalise[1 if resize else 0 :],
    ])  # fmt: skip
    evaluate = v2.Compose(normalise)

    def pair(example) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image = load_image(seg.image_source(example))
        mask = seg.decode_mask(example)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return tv_tensors.Image(pixels), tv_tensors.Mask(torch.from_numpy(np.array(mask)))

    def apply(transform):
        def batch_fn(batch):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            pixels, masks = zip(*(transform(*pair(row)) for row in rows))
            return {"pixel_values": list(pixels), "labels": [m.to(torch.uint8) for m in masks]}

        return batch_fn

    return apply(train), apply(evaluate)


def collate(examples):
    """Stack images and masks, padding to the largest (and to a multiple of 32) in the batch."""
    height = max(e["pixel_values"].shape[-2] for e in examples)
    width = max(e["pixel_values"].shape[-1] for e in examples)
    height, width = -(-height // 32) * 32, -(-width // 32) * 32
    pixels = torch.zeros(len(examples), 3, height, width)
    labels = torch.full((len(examples), height, width), IGNORE_INDEX, dtype=torch.uint8)
    for i, e in enumerate(examples):
        h, w = e["pixel_values"].shape[-2:]
        pixels[i, :, :h, :w] = e["pixel_values"]
        labels[i, :h, :w] = e["labels"]
    return {"pixel_values": pixels, "labels": labels}


class SegmentationLoss:
    """Cross-entropy at full resolution, optionally plus soft Dice over the defect classes."""

    def __init__(self, dice_weight: float = 0.0):
        self.dice_weight = dice_weight

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = F.interpolate(outputs["logits"], size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, labels)
        return loss


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice of the defect classes present in the batch, ignoring padded pixels.

    Classes absent from the batch are left to the cross-entropy: with a smoothed Dice they
    would score ``1 / (predicted mass + 1)``, a push towards zero in every batch without
    them that drove rare classes (a few percent of images) to probabilities of 1e-9.
    """
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    probabilities = logits.softmax(1) * valid
    one_hot = F.one_hot(labels.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)[1:]
    truth = one_hot.sum(dims)[1:]
    total = probabilities.sum(dims)[1:] + truth
    present = truth > 0
    if not present.any():
        return logits.sum() * 0.0  # a batch of clean crops: nothing for Dice to score
    dice = (2 * intersection + 1) / (total + 1)
    return 1 - dice[present].mean()


class SegmentationTrainer(VispectTrainer):
    """The shared trainer (checkpoint reload fix, optional image sampling weights)."""


def balanced_image_weights(defects: list[list[bool]]) -> list[float]:
    """Per-image sampling weights giving each group (clean, or rarest defect class present) equal mass."""
    counts = [sum(flags[c] for flags in defects) for c in range(len(defects[0]) if defects else 0)]
    groups = [min((c for c, present in enumerate(flags) if present), key=counts.__getitem__, default=-1)
              for flags in defects]  # fmt: skip
    sizes = {group: groups.count(group) for group in set(groups)}
    return [1.0 / sizes[group] for group in groups]


def predicted_labels(logits, labels):
    """Keep only the class map (uint8, full size) of each evaluation batch, not its logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return upsampled.argmax(1).to(torch.uint8)


def compute_metrics_for(id2label):
    def compute(prediction):
        return segmentation_metrics(np.asarray(prediction.predictions), np.asarray(prediction.label_ids), id2label)

    return compute


def plot_predictions(split, trainer, id2label, path, count: int = 4) -> None:
    """Image / truth / prediction for a few validation images, defective ones first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    plain = split.with_format(None)
    defective = [i for i, d in enumerate(plain[seg.DEFECTS]) if any(d)]
    chosen = (defective + [i for i in range(len(plain)) if i not in defective])[:count]
    colours = ListedColormap(
        ["#00000000", "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4"][: len(id2label)]
    )
    figure, axes = plt.subplots(len(chosen), 3, figsize=(15, 1.4 * len(chosen) + 1), squeeze=False)
    for row, index in enumerate(chosen):
        example = split[index]
        batch = collate([example])
        with torch.inference_mode():
            trainer.model.eval()
            logits = trainer.model(pixel_values=batch["pixel_values"].to(trainer.model.device)).logits
        predicted = predicted_labels(logits.cpu(), batch["labels"])[0].numpy()
        image = np.asarray(load_image(seg.image_source(plain[index])))
        truth = seg.decode_mask(plain[index])
        h, w = truth.shape
        for column, (title, overlay) in enumerate(
            (("image", None), ("truth", truth), ("prediction", predicted[:h, :w]))
        ):
            axis = axes[row, column]
            axis.imshow(image)
            if overlay is not None:
                axis.imshow(np.ma.masked_equal(overlay, 0), cmap=colours, vmin=0, vmax=len(id2label) - 1, alpha=0.6,
                            interpolation="nearest")  # fmt: skip
            axis.set_title(f"{plain[index][seg.IMAGE_ID]}: {title}", fontsize=8)
            axis.axis("off")
    legend = ", ".join(f"{name}" for i, name in id2label.items() if i)
    figure.suptitle(f"Validation examples (colours in class order: {legend})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def validation_label_maps(model, split) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true class maps ``(N, H, W)`` of ``split`` (its eval transform already set)."""
    predicted, truth = [], []
    model.eval()
    for index in range(len(split)):
        batch = collate([split[index]])
        with torch.inference_mode():
            logits = model(pixel_values=batch["pixel_values"].to(model.device)).logits.float().cpu()
        predicted.append(predicted_labels(logits, batch["labels"])[0].numpy())
        truth.append(batch["labels"][0].numpy())
    return np.stack(predicted), np.stack(truth)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, recipe, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    resume_from = check_output_dir(training_args, recipe.overwrite_output_dir)
    progress.phase(CHECKING_DATA)
    data = load_data(data_args, training_args.seed)
    if training_args.should_log:
        for name, split in data.splits.items():
            defective = sum(any(d) for d in split.with_format(None)[seg.DEFECTS])
            print(f"{name}: {len(split)} images, {defective} with defects", flush=True)
        if data.skipped:
            print(f"skipped {len(data.skipped)} image(s): {data.skipped[:3]}", flush=True)
    model, processor = build_model(model_args.model_name_or_path, data.id2label)
    if data_args.resize:
        # Recorded in the checkpoint's config: pipelines.segmentation resizes to it, then back.
        setattr(model.config, INFERENCE_RESIZE_KEY, list(data_args.resize))
    train_fn, eval_fn = joint_transforms(processor, data_args.crop, data_args.resize, data_args.defect_crop_probability)
    data.splits["train"].set_transform(train_fn)
    data.splits["validation"].set_transform(eval_fn)

    weights = (
        balanced_image_weights(data.splits["train"].with_format(None)[seg.DEFECTS]) if recipe.balance_classes else None
    )
    trainer = SegmentationTrainer(
        model=model,
        args=training_args,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits["validation"],
        data_collator=collate,
        compute_metrics=compute_metrics_for(data.id2label),
        compute_loss_func=SegmentationLoss(recipe.dice_weight if recipe.loss == "ce_dice" else 0.0),
        preprocess_logits_for_metrics=predicted_labels,
        processing_class=processor,
        callbacks=training_callbacks(recipe.early_stopping_patience),
        sample_weights=weights,
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    if progress.stop_requested():
        return {}  # the Trainer saved a checkpoint; the final model and report wait for the resumed run
    progress.phase(EVALUATING)
    tuned = None
    if trainer.is_world_process_zero():
        predicted, truth = validation_label_maps(trainer.model, data.splits["validation"])
        tuned = record_min_areas(trainer.model, predicted, truth, data.id2label)
        print(f"minimum areas fitted on validation: {tuned}", flush=True)
    trainer.save_model()
    share_saved_weights(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    if tuned is not None:
        metrics["eval_mean_dice_with_min_area"] = tuned["mean_dice_after"]
    if trainer.is_world_process_zero():
        progress.phase(WRITING_REPORT)
        trainer.save_metrics("eval", metrics)
        out = Path(training_args.output_dir)
        plot_predictions(data.splits["validation"], trainer, data.id2label, out / PREDICTIONS_PLOT)
        report.plot_training_curves(trainer.state.log_history, out / TRAINING_CURVES_PLOT)
        names = [data.id2label[i] for i in sorted(data.id2label)]
        report.write_model_card(
            out / MODEL_CARD_FILE,
            title=f"{out.name}: defect segmenter ({len(names) - 1} defect classes)",
            base_model=model_args.model_name_or_path,
            dataset=str(data_args.data_dir or data_args.mask_dir or data_args.dataset_name),
            hyperparameters={
                **asdict(model_args),
                **asdict(recipe),
                "crop_size": data_args.crop_size,
                "resize_to": data_args.resize_to,
                "defect_crop_probability": data_args.defect_crop_probability,
                **{
                    k: getattr(training_args, k)
                    for k in ("learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "seed")
                },
            },  # fmt: skip
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            class_names=names,
            calibration=None,
            task="image-segmentation",
            postprocessing=describe_min_areas(tuned),
            intended_use="Outline surface defects on steel-strip images and name their type.",
            limitations=[
                "Trained on the data named above; real strips with other lighting or defect looks need retraining.",
                "Dice is averaged over (image, class) pairs, where empty pairs count as perfect.",
            ],
            command=" ".join(["python -m train.segmentation.train", *(sys.argv[1:] if argv is None else argv)]),
        )
    progress.finish(metrics, training_args.output_dir)
    return metrics


def training_callbacks(early_stopping_patience: int | None) -> list:
    """Progress reporting (and stop-on-SIGTERM), plus early stopping when asked for."""
    callbacks = [progress.ProgressCallback()]
    if early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience))
    return callbacks


if __name__ == "__main__":
    progress.run_cli(main, (DataError, ArgumentsError, ModelLoadError))

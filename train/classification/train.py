"""Fine-tune an image classifier with the transformers Trainer.

    python -m train.classification.train --model_name_or_path default \\
        --train_dir data/parts/train --validation_dir data/parts/validation \\
        --test_dir data/parts/test --other_dir data/parts/other --output_dir models/parts

Flags follow transformers' ``run_image_classification.py`` where it has one; every
``TrainingArguments`` flag works too. A single ``.json`` file may hold the whole config.
The output directory is a checkpoint that ``pipelines/`` and the app load as it is, with
its evaluation report, calibration and model card beside the weights.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForImageClassification,
    EarlyStoppingCallback,
    TrainingArguments,
    set_seed,
)

from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained, share_saved_weights
from common.data_check import unreadable_problem
from common.image_io import load_image
from common.preprocessing import batch_preprocessor, input_geometry
from common.training_progress import CHECKING_DATA
from train import progress
from train.arguments import ArgumentsError, check_output_dir, parse_script_args
from train.classification import data
from train.classification.augment import AugmentConfig, batch_mixer, train_transform
from train.classification.metrics import compute_metrics_fn
from train.classification.report import write_report
from train.trainer import VispectTrainer

logger = logging.getLogger("vispect.train")


@dataclass
class ModelArguments:
    """Which model to start from and what to train."""

    model_name_or_path: str = field(
        default="default",
        metadata={"help": "'default' (offline ImageNet EfficientNet-Lite0), a checkpoint directory, or a hub id."},
    )
    problem_type: str = field(
        default="single_label", metadata={"help": "'single_label' (softmax) or 'multi_label' (sigmoid, BCE)."}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Train only the new classification head."})
    image_size: str | None = field(
        default=None,
        metadata={
            "help": "Train (and serve) at HEIGHTxWIDTH, resizing the whole image without a crop, e.g. 128x800 "
            "for wide steel strips. Default: the checkpoint's own input size and crop."
        },
    )

    def __post_init__(self):
        if self.problem_type not in {"single_label", "multi_label"}:
            raise ValueError(f"--problem_type must be 'single_label' or 'multi_label', got {self.problem_type!r}.")
        if self.image_size is not None:
            self.input_size  # noqa: B018 - validate now, not after the data has loaded

    @property
    def input_size(self) -> tuple[int, int] | None:
        if self.image_size is None:
            return None
        height, _, width = self.image_size.lower().partition("x")
        if not (height.isdigit() and width.isdigit() and int(height) >= 16 and int(width) >= 16):
            raise ValueError(
                f"--image_size must look like 224x224 (HEIGHTxWIDTH, each >= 16), got {self.image_size!r}."
            )
        return int(height), int(width)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label"


@dataclass
class DataArguments:
    """Where the images come from and how to read them."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hugging Face dataset (hub id or path)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_name used for training."})
    validation_split: str = field(default="validation", metadata={"help": "Split used for validation, if present."})
    test_split: str = field(default="test", metadata={"help": "Split used for the final test, if present."})
    train_dir: str | None = field(default=None, metadata={"help": "Folder with one sub-folder of images per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation folder, same layout."})
    test_dir: str | None = field(default=None, metadata={"help": "Test folder, same layout."})
    train_csv: str | None = field(
        default=None, metadata={"help": "CSV of path,label (labels joined by ';' for multi-label)."}
    )
    validation_csv: str | None = field(default=None, metadata={"help": "Validation CSV, same columns."})
    test_csv: str | None = field(default=None, metadata={"help": "Test CSV, same columns."})
    other_dir: str | None = field(
        default=None,
        metadata={"help": "Images of none of the classes, to tune 'unknown' rejection (validation/ and test/ inside)."},
    )
    image_column_name: str = field(default="image", metadata={"help": "Image column (CSV: the path column)."})
    label_column_name: str = field(default="label", metadata={"help": "Label column."})
    train_val_split: float = field(default=0.15, metadata={"help": "Validation share held out when none is given."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training data (for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation/test data."})
    max_bad_fraction: float = field(
        default=0.05, metadata={"help": "Refuse to train when more than this share of images cannot be read."}
    )

    def __post_init__(self):
        sources = [bool(self.dataset_name), bool(self.train_dir), bool(self.train_csv)]
        if sum(sources) != 1:
            raise ValueError(
                "Give exactly one training source: --dataset_name, --train_dir or --train_csv "
                f"(got dataset_name={self.dataset_name}, train_dir={self.train_dir}, train_csv={self.train_csv})."
            )
        if self.train_csv and self.image_column_name == "image":
            self.image_column_name = "path"  # the CSV column that holds file paths


@dataclass
class RecipeArguments:
    """Augmentation, imbalance handling, stopping and trust (calibration, rejection)."""

    augment_scale_min: float = field(default=0.6, metadata={"help": "RandomResizedCrop's smallest area share."})
    augment_rotation: float = field(default=15.0, metadata={"help": "Random rotation range in degrees (0: off)."})
    augment_color_jitter: float = field(default=0.2, metadata={"help": "ColorJitter strength (0: off)."})
    augment_hflip: bool = field(default=True, metadata={"help": "Flip left-right (off for text and digits)."})
    augment_vflip: bool = field(default=False, metadata={"help": "Also flip vertically (top-down imagery)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp alpha (0: off). Single-label only."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (0: off). Single-label only."})
    class_weights: str = field(default="none", metadata={"help": "'auto': weight the loss by inverse class frequency."})
    weighted_sampler: bool = field(default=False, metadata={"help": "Sample classes equally often in training."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement."}
    )
    rejection_method: str = field(
        default="max_softmax", metadata={"help": "Open-set score: 'max_softmax', 'energy' or 'none'."}
    )
    known_acceptance: float = field(
        default=0.95, metadata={"help": "Without --other_dir: share of known validation images to accept."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished model already in --output_dir."}
    )

    def __post_init__(self):
        if self.class_weights not in {"none", "auto"}:
            raise ValueError(f"--class_weights must be 'none' or 'auto', got {self.class_weights!r}.")
        if self.rejection_method not in {"max_softmax", "energy", "none"}:
            raise ValueError(
                f"--rejection_method must be 'max_softmax', 'energy' or 'none', got {self.rejection_method!r}."
            )

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(
            scale_min=self.augment_scale_min,
            hflip=self.augment_hflip,
            vflip=self.augment_vflip,
            rotation_degrees=self.augment_rotation,
            color_jitter=self.augment_color_jitter,
        )


# Defaults that suit fine-tuning with a report at the end; any flag still overrides them.
SCRIPT_DEFAULTS = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "save_total_limit": 2,
    "report_to": "none",
    "remove_unused_columns": False,
    "learning_rate": 1e-3,
    "num_train_epochs": 5,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "ddp_find_unused_parameters": False,
}
ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None):
    """Flags (or one .json file) -> (model, data, recipe, training) argument dataclasses."""
    return parse_script_args(ARGUMENT_CLASSES, SCRIPT_DEFAULTS, argv, prog="python -m train.classification.train")


def load_training_data(data_args: DataArguments, multi_label: bool, seed: int) -> data.LabeledImages:
    """Load, standardise, drop unreadable images and check the classes."""
    if data_args.train_dir:
        dirs = {"train": data_args.train_dir, "validation": data_args.validation_dir, "test": data_args.test_dir}
        raw = data.load_imagefolder({k: v for k, v in dirs.items() if v})
        image_column, label_column = "image", "label"
    elif data_args.train_csv:
        csvs = {"train": data_args.train_csv, "validation": data_args.validation_csv, "test": data_args.test_csv}
        raw = data.load_csv(
            {k: v for k, v in csvs.items() if v}, data_args.label_column_name, data_args.image_column_name
        )
        image_column, label_column = "image", data_args.label_column_name
    else:
        names = {"train": data_args.train_split, "validation": data_args.validation_split, "test": data_args.test_split}
        raw = data.load_hub(data_args.dataset_name, data_args.dataset_config_name, names)
        image_column, label_column = data_args.image_column_name, data_args.label_column_name
    splits, label_names = data.standardise(raw, image_column, label_column, multi_label)

    skipped: list[tuple[str, str]] = []
    checked = {}
    for name, split in splits.items():
        limit = data_args.max_train_samples if name == "train" else data_args.max_eval_samples
        if limit is not None:
            split = split.shuffle(seed=seed).select(range(min(limit, len(split))))
        good, bad = data.drop_unreadable(split)
        problem = unreadable_problem(name, len(bad), len(split), data_args.max_bad_fraction, bad)
        if problem:
            raise data.DataError(problem)
        skipped += bad
        checked[name] = good
    splits = data.DatasetDict(checked)
    data.check_classes(data.class_counts(splits["train"], label_names, multi_label))
    if "validation" not in splits:
        splits = data.add_validation_split(splits, data_args.train_val_split, seed, multi_label)
    return data.LabeledImages(splits, label_names, multi_label, skipped)


def build_model(model_args: ModelArguments, label_names: list[str]):
    """Load the checkpoint with a new head for ``label_names``; returns (model, processor)."""
    id2label = dict(enumerate(label_names))
    problem_type = "multi_label_classification" if model_args.multi_label else "single_label_classification"
    model = load_pretrained(
        AutoModelForImageClassification,
        model_args.model_name_or_path,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        problem_type=problem_type,
        ignore_mismatched_sizes=True,  # the old head's shape belongs to the old classes
    )
    if hasattr(model.config, "label_names"):
        # TimmWrapperConfig saves `label_names` in preference to id2label, and a config loaded
        # from a labelled checkpoint (the ImageNet default) keeps the old names unless told.
        model.config.label_names = list(label_names)
    processor = load_image_processor(model_args.model_name_or_path)
    if model_args.input_size:
        processor = resize_whole_image(model, processor, model_args.input_size)
    if model_args.freeze_backbone:
        freeze_all_but_head(model)
    return model, processor


def resize_whole_image(model, processor, size: tuple[int, int]):
    """Make the checkpoint resize whole images to ``size`` (no crop), in what it will save.

    A center crop of a 256x1600 steel strip would keep one seventh of it; squashing to a
    size with the strip's aspect ratio keeps every defect in view.
    """
    height, width = size
    if getattr(processor, "data_config", None) is not None:  # timm wrapper: the config carries it
        cfg = {**(model.config.pretrained_cfg or {}), "input_size": [3, height, width], "crop_pct": 1.0,
               "crop_mode": "squash", "fixed_input_size": False}  # fmt: skip
        model.config.pretrained_cfg = cfg
        return type(processor)(pretrained_cfg=cfg)
    processor.size = {"height": height, "width": width}
    processor.do_center_crop = False
    if hasattr(processor, "crop_pct"):
        processor.crop_pct = None
    return processor


def classification_head(model) -> torch.nn.Module:
    """The module that maps features to class logits."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return timm_model.get_classifier()
    head = getattr(model, "classifier", None)
    if head is None:
        raise ValueError(
            f"Cannot find the classification head of {type(model).__name__}; train without --freeze_backbone."
        )
    return head


def freeze_all_but_head(model) -> None:
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in classification_head(model).parameters():
        parameter.requires_grad = True


def make_transforms(processor, augment: AugmentConfig):
    """(train, eval) functions for ``Dataset.set_transform``; eval matches the app exactly."""
    augment_image = train_transform(input_geometry(processor), augment)
    preprocess = batch_preprocessor(processor)

    def train_batch(batch):
        images = [load_image(data.image_source(item)) for item in batch[data.IMAGE]]
        pixel_values = [augment_image(image) for image in images]
        # The Trainer has one collator for training and evaluation; this flag tells it
        # which batches may be mixed (MixUp/CutMix must never touch evaluation batches).
        return {"pixel_values": pixel_values, "labels": batch[data.LABELS], "augmented": [True] * len(images)}

    def eval_batch(batch):
        images = [load_image(data.image_source(item)) for item in batch[data.IMAGE]]
        return {"pixel_values": list(preprocess(images)), "labels": batch[data.LABELS]}

    return train_batch, eval_batch


class Collator:
    """Stack a batch; optionally MixUp/CutMix it (labels then become soft)."""

    def __init__(self, mixer=None, multi_label: bool = False):
        self.mixer = mixer
        self.multi_label = multi_label

    def __call__(self, examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        dtype = torch.float32 if self.multi_label else torch.long
        labels = torch.tensor([example["labels"] for example in examples], dtype=dtype)
        if self.mixer is not None and examples[0].get("augmented", False):
            pixel_values, labels = self.mixer(pixel_values, labels)
        return {"pixel_values": pixel_values, "labels": labels}


def inverse_frequency_weights(counts: list[int]) -> torch.Tensor:
    """Loss weights so that every class contributes equally on average."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return counts_t.sum() / (len(counts) * counts_t)


class ClassificationLoss:
    """Cross-entropy (hard or soft labels, optional class weights) or BCE for multi-label."""

    def __init__(self, class_weights: torch.Tensor | None = None, multi_label: bool = False):
        self.class_weights = class_weights
        self.multi_label = multi_label

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)
        if labels.dtype.is_floating_point:  # soft labels from MixUp/CutMix
            return F.cross_entropy(logits, labels.to(logits.dtype), weight=weight)
        return F.cross_entropy(logits, labels, weight=weight)


class ImageClassificationTrainer(VispectTrainer):
    """The shared trainer (checkpoint reload fix, optional class-balanced sampler)."""


def print_class_counts(labeled: data.LabeledImages) -> None:
    for name, split in labeled.splits.items():
        counts = data.class_counts(split, labeled.label_names, labeled.multi_label)
        table = ", ".join(f"{label}: {count}" for label, count in counts.items())
        print(f"{name}: {len(split)} images ({table})", flush=True)
    if labeled.skipped:
        print(f"skipped {len(labeled.skipped)} unreadable image(s); see skipped_images.csv", flush=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, calibrate and write the report; returns the final metrics."""
    model_args, data_args, recipe, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    resume_from = check_output_dir(training_args, recipe.overwrite_output_dir)

    progress.phase(CHECKING_DATA)
    labeled = load_training_data(data_args, model_args.multi_label, training_args.seed)
    if training_args.should_log:
        print_class_counts(labeled)
    model, processor = build_model(model_args, labeled.label_names)

    counts = list(data.class_counts(labeled.splits["train"], labeled.label_names, labeled.multi_label).values())
    weights = sample_weights(labeled, counts) if recipe.weighted_sampler else None
    train_batch, eval_batch = make_transforms(processor, recipe.augment_config())
    labeled.splits["train"].set_transform(train_batch)
    for name in ("validation", "test"):
        if name in labeled.splits:
            labeled.splits[name].set_transform(eval_batch)

    if training_args.metric_for_best_model is None or training_args.metric_for_best_model == "loss":
        training_args.metric_for_best_model = "mAP" if labeled.multi_label else "accuracy"
        training_args.greater_is_better = True
    if training_args.eval_strategy == "no":
        training_args.load_best_model_at_end = False
    mixer = None if labeled.multi_label else batch_mixer(len(counts), recipe.mixup_alpha, recipe.cutmix_alpha)
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=labeled.splits["train"],
        eval_dataset=labeled.splits["validation"],
        data_collator=Collator(mixer, labeled.multi_label),
        compute_metrics=compute_metrics_fn(model.config.problem_type),
        compute_loss_func=ClassificationLoss(
            inverse_frequency_weights(counts) if recipe.class_weights == "auto" else None, labeled.multi_label
        ),
        processing_class=processor,
        callbacks=training_callbacks(recipe.early_stopping_patience),
        sample_weights=weights,
    )
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if progress.stop_requested():
        return {}  # the Trainer saved a checkpoint; the final model and report wait for the resumed run
    trainer.save_model()
    share_saved_weights(training_args.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(training_args.output_dir)

    metrics = write_report(
        trainer,
        labeled,
        other_dir=data_args.other_dir,
        rejection_method=recipe.rejection_method,
        known_acceptance=recipe.known_acceptance,
        command=" ".join(["python -m train.classification.train", *(sys.argv[1:] if argv is None else argv)]),
        hyperparameters={**asdict(model_args), **asdict(recipe), **_key_training_args(training_args)},
        dataset=data_args.dataset_name or data_args.train_dir or data_args.train_csv,
    )
    progress.finish(metrics, training_args.output_dir)
    return metrics


def training_callbacks(early_stopping_patience: int | None) -> list:
    """Progress reporting (and stop-on-SIGTERM), plus early stopping when asked for."""
    callbacks = [progress.ProgressCallback()]
    if early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience))
    return callbacks


def sample_weights(labeled: data.LabeledImages, counts: list[int]) -> list[float]:
    """Per-image weights that make every class equally likely to be drawn."""
    if labeled.multi_label:
        raise data.DataError("--weighted_sampler works with single-label data only; use --class_weights auto.")
    labels = labeled.splits["train"][data.LABELS]
    return [1.0 / max(counts[int(label)], 1) for label in labels]


def _key_training_args(args: TrainingArguments) -> dict:
    keys = (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "weight_decay",
        "warmup_steps",
        "lr_scheduler_type",
        "seed",
        "bf16",
    )
    return {key: getattr(args, key) for key in keys}


if __name__ == "__main__":
    progress.run_cli(main, (data.DataError, ArgumentsError, ModelLoadError))

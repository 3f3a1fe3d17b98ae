"""From the Train tab's few controls to the training CLI's command line, checked before a job starts.

A job runs ``python -m MODULE FLAGS`` exactly as a terminal user would; this module writes FLAGS
and checks them with the CLI's own parser (``train.arguments``), so a bad "Advanced" flag is
refused in the CLI's words before anything is queued.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from jobs.store import JobError

CLASSIFIER, MULTI_LABEL, SEGMENTER = "classifier", "multi_label", "segmenter"
TASKS = {
    CLASSIFIER: "Image classifier (one label per image)",
    MULTI_LABEL: "Multi-label classifier (any number of labels per image)",
    SEGMENTER: "Defect segmenter (outlines defects)",
}
MODULES = {
    CLASSIFIER: "train.classification.train",
    MULTI_LABEL: "train.classification.train",
    SEGMENTER: "train.segmentation.train",
}
DEFAULT_BASE_MODEL = {CLASSIFIER: "default", MULTI_LABEL: "default", SEGMENTER: "b0"}
# The "Export for CPU" job: a finished model copied with its network in ONNX (``python -m train.export``).
EXPORT = "export"
EXPORT_MODULE = "train.export"

# Augmentation strength -> classifier flags. "standard" is the CLI's own defaults; "light" is the
# recipe that reached the digits and parts goals in bench/train_classification.py.
AUGMENTATION = {
    "none": {
        "augment_scale_min": "1.0",
        "augment_rotation": "0",
        "augment_color_jitter": "0",
        "augment_hflip": "false",
    },
    "light": {"augment_scale_min": "0.8", "augment_rotation": "10", "augment_color_jitter": "0.1"},
    "standard": {},
    "strong": {"augment_scale_min": "0.4", "augment_rotation": "30", "augment_color_jitter": "0.4"},
}

# Flags a job sets itself: where the data is and where the model goes.
JOB_FLAGS = (
    "output_dir",
    "train_dir",
    "validation_dir",
    "test_dir",
    "train_csv",
    "validation_csv",
    "test_csv",
    "other_dir",
    "data_dir",
    "mask_dir",
    "dataset_name",
)


@dataclass(frozen=True)
class Recipe:
    """What the Train tab asks, with its defaults (those of the recipes that reached the benchmark goals).

    Attributes:
        task: A key of :data:`TASKS`.
        base_model: ``default``, a classifier checkpoint or hub id; ``b0`` (or a checkpoint) for the segmenter.
        epochs: Passes over the training images.
        image_size: ``HEIGHTxWIDTH`` to train and serve at; "" keeps the base model's input size.
        learning_rate: The optimiser's step size.
        augmentation: A key of :data:`AUGMENTATION` (classifiers).
        balance_classes: Draw rare classes as often as common ones.
        use_other: Fit the "unknown" answer on an ``other/`` folder when the data has one.
        seed: Makes a run repeatable: the same data and seed give the same model.
        advanced: More CLI flags, as typed on a command line (``--weight_decay 0.01``).
    """

    task: str = CLASSIFIER
    base_model: str = ""
    epochs: float = 5
    image_size: str = ""
    learning_rate: float = 1e-3
    augmentation: str = "light"
    balance_classes: bool = False
    use_other: bool = True
    seed: int = 0
    advanced: str = ""

    def check(self) -> None:
        """Raises JobError for a value no training could take, naming the control."""
        if self.task not in TASKS:
            raise JobError(f"Task '{self.task}' is not one of: {', '.join(TASKS)}.")
        if not self.epochs or self.epochs <= 0:
            raise JobError(f"Epochs must be above 0, got {self.epochs}.")
        if not self.learning_rate or not 0 < self.learning_rate < 1:
            raise JobError(f"Learning rate must be between 0 and 1 (1e-3 is a good start), got {self.learning_rate}.")
        if self.augmentation not in AUGMENTATION:
            raise JobError(f"Augmentation '{self.augmentation}' is not one of: {', '.join(AUGMENTATION)}.")
        if self.seed is None or int(self.seed) != self.seed or self.seed < 0:
            raise JobError(f"Seed must be a whole number of at least 0, got {self.seed}.")


def advanced_flags(text: str) -> list[str]:
    """The "Advanced" box as argv words (shell quoting rules; never evaluated).

    Raises:
        JobError: unbalanced quotes, a word that is not a flag or a flag's value, or a flag the job sets.
    """
    try:
        words = shlex.split(text or "")
    except ValueError as error:
        raise JobError(f"Advanced flags: {error} (check the quotes).") from None
    if words and not words[0].startswith("--"):
        raise JobError(f"Advanced flags must start with a --flag, got '{words[0]}' (e.g. --weight_decay 0.01).")
    for word in words:
        name = word[2:].partition("=")[0]
        if word.startswith("--") and name in JOB_FLAGS:
            raise JobError(
                f"Advanced flags: --{name} is set by the job (the data you chose and the job's folder); remove it."
            )
    return words


def training_argv(recipe: Recipe, data_flags: list[str], output_dir: str, has_other: bool) -> list[str]:
    """The CLI flags of a job: data, output, the controls, then the advanced flags (which win over the controls)."""
    recipe.check()
    base = recipe.base_model.strip() or DEFAULT_BASE_MODEL[recipe.task]
    flags = {
        "model_name_or_path": base,
        "output_dir": output_dir,
        "num_train_epochs": f"{recipe.epochs:g}",
        "learning_rate": f"{recipe.learning_rate:g}",
        "seed": str(int(recipe.seed)),
        # The log is for people; progress goes to the progress file, not to a bar redrawn in the log.
        "disable_tqdm": "true",
    }
    if recipe.task == SEGMENTER:
        if recipe.image_size.strip():
            flags["resize_to"] = recipe.image_size.strip()
        if recipe.balance_classes:
            flags["balance_classes"] = "true"
    else:
        if recipe.task == MULTI_LABEL:
            flags["problem_type"] = "multi_label"
        if recipe.image_size.strip():
            flags["image_size"] = recipe.image_size.strip()
        flags.update(AUGMENTATION[recipe.augmentation])
        if recipe.balance_classes:
            flags["weighted_sampler" if recipe.task == CLASSIFIER else "class_weights"] = (
                "true" if recipe.task == CLASSIFIER else "auto"
            )
    data = list(data_flags)
    if not (recipe.use_other and has_other):
        data = _without_flag(data, "--other_dir")
    argv = data + [word for name, value in flags.items() for word in (f"--{name}", value)]
    return argv + advanced_flags(recipe.advanced)


def _without_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        else:
            out.append(word)
    return out


def check_argv(task: str, argv: list[str]) -> None:
    """Parse ``argv`` with the task's CLI parser, as the job will; raises JobError in the CLI's words."""
    # Imported here: the training scripts pull in the Trainer, which the app needs only for this check.
    try:
        if MODULES[task] == "train.segmentation.train":
            from train.segmentation.train import parse_args
        else:
            from train.classification.train import parse_args
        from train.arguments import ArgumentsError
    except ImportError as error:  # the serving container ships without train/ and its packages
        raise JobError(
            f"Training is not installed in this app ({error.name} is missing): the serving image only runs models. "
            "Train with the full install (make run, or pip install -r requirements.txt), then serve the model."
        ) from None

    try:
        parse_args(argv)
    except ArgumentsError as error:
        raise JobError(f"The training command was refused: {error}") from None


def export_argv(model_dir: str, output_dir: str, training_argv: list[str], int8: bool) -> list[str]:
    """The ``train.export`` flags that ship a job's model for a CPU box: ONNX, checked on the job's own data.

    The check against PyTorch uses the job's test split (else its validation split; a segmenter's
    Kaggle folder); int8 is calibrated on the training images. A segmenter's one folder serves both,
    so with int8 it is left to the export to hold out the images it did not calibrate on.
    """
    flags = _flag_values(training_argv)
    held_out = flags.get("test_dir") or flags.get("validation_dir") or flags.get("data_dir")
    calibration = flags.get("train_dir") or flags.get("data_dir")
    argv = [model_dir, output_dir, "--format", "onnx"]
    if int8:
        argv += ["--quantize", "int8", *(["--calibration_dir", calibration] if calibration else [])]
    if held_out and not (int8 and held_out == calibration):
        argv += ["--eval_dir", held_out]
    return argv


def check_export_installed() -> None:
    """Raises JobError when ``train.export`` (and the onnx packages it needs) cannot be imported here."""
    try:
        import train.export.cli  # noqa: F401
    except ImportError as error:
        raise JobError(
            f"Exporting is not installed in this app ({error.name} is missing): the serving image only runs models. "
            f"Export with the full install (python -m {EXPORT_MODULE} MODEL OUT --format onnx)."
        ) from None


def _flag_values(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a command line (the last one wins, as for argparse)."""
    return {word[2:]: value for word, value in zip(argv, argv[1:]) if word.startswith("--")}


def command_line(module: str, argv: list[str]) -> str:
    """The job's command as a terminal user would type it (to repeat the run outside the app)."""
    return shlex.join(["python", "-m", module, *argv])

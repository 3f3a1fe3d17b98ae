"""Image classification: preprocess -> forward -> postprocess, for any saved classifier.

>>> from pipelines.classification import ImageClassifier
>>> classifier = ImageClassifier.from_pretrained("default")
>>> classifier.classify("cat.jpg", top_k=1).predictions[0].label  # doctest: +SKIP
'tiger cat'
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from common.checkpoints import ModelLoadError, load_pretrained
from common.image_io import ImageLoadError, load_image
from common.preprocessing import batch_preprocessor, input_geometry
from pipelines.trust import CalibrationFileError, TrustSettings

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One class of a classifier's answer."""

    label: str
    score: float
    index: int


@dataclass(frozen=True)
class Classification:
    """A classifier's answer for one image: ranked classes and the open-set verdict."""

    predictions: list[Prediction]
    unknown: bool = False  # below the rejection threshold: none of the known classes
    open_set_score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded classifier is, for people (the app's Model tab) and logs."""

    source: str
    architecture: str
    model_type: str
    parameters: int
    num_labels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    metrics: dict[str, float]
    trust: TrustSettings
    checkpoint_dir: str | None


class ImageClassifier:
    """A classifier with its own preprocessing and trust settings, as saved in its checkpoint."""

    def __init__(self, model, processor, source: str, checkpoint_dir: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self._preprocess = batch_preprocessor(processor)
        self.source = source
        self.checkpoint_dir = checkpoint_dir
        self.trust = TrustSettings.load(checkpoint_dir)
        self.id2label = {int(i): name for i, name in model.config.id2label.items()}
        self.multi_label = model.config.problem_type == "multi_label_classification"

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default") -> ImageClassifier:
        """Load ``default``, a checkpoint directory or a hub id.

        Raises:
            common.checkpoints.ModelLoadError: with the reason and the fix.
        """
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        # float32 whatever the file holds: checkpoints may ship in fp16 to stay small, and
        # most CPU kernels are fastest (or only exist) in float32.
        model = load_pretrained(AutoModelForImageClassification, name_or_path, dtype=torch.float32)
        processor = load_pretrained(AutoImageProcessor, name_or_path)
        location = model.config._name_or_path
        checkpoint_dir = location if location and Path(location).is_dir() else None
        try:
            return cls(model, processor, source=str(name_or_path), checkpoint_dir=checkpoint_dir)
        except CalibrationFileError as error:
            raise ModelLoadError(str(error)) from error

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> the ``pixel_values`` batch the checkpoint expects."""
        return self._preprocess(images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One model call; returns logits."""
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (softmax of logits / T; sigmoid for multi-label)."""
        if self.multi_label:
            return logits.float().sigmoid()
        return (logits.float() / self.trust.temperature).softmax(dim=-1)

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[Classification]:
        """Logits -> the ``top_k`` most likely classes of each image and its open-set verdict."""
        probabilities = self.probabilities(logits)
        k = max(1, min(top_k, probabilities.shape[-1]))
        scores, indices = probabilities.topk(k, dim=-1)
        unknown = self.trust.is_unknown(logits)
        open_set = self.trust.open_set_score(logits) if self.trust.rejection_method else None
        results = []
        for row, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist())):
            predictions = [Prediction(self.id2label.get(i, str(i)), s, i) for s, i in zip(row_scores, row_indices)]
            results.append(
                Classification(
                    predictions=predictions,
                    unknown=bool(unknown[row]),
                    open_set_score=None if open_set is None else float(open_set[row]),
                    threshold=self.trust.rejection_threshold,
                )
            )
        return results

    def classify(self, image: ImageSource, top_k: int = 5) -> Classification:
        """Classify one image (a path, bytes or a PIL image).

        Raises:
            common.image_io.ImageLoadError: the image cannot be read.
        """
        return self.classify_batch([image], top_k=top_k)[0]

    def classify_batch(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Classification]:
        """Classify several images in one forward pass."""
        rgb = [load_image(image) for image in images]
        return self.postprocess(self.forward(self.preprocess(rgb)), top_k=top_k)

    def describe(self) -> ModelInfo:
        """Architecture, size, preprocessing, metrics and trust settings of the loaded model."""
        config = self.model.config
        geometry = input_geometry(self.processor)
        architecture = getattr(config, "architecture", None) or (config.architectures or [type(self.model).__name__])[0]
        return ModelInfo(
            source=self.source,
            architecture=architecture,
            model_type=config.model_type,
            parameters=sum(p.numel() for p in self.model.parameters()),
            num_labels=config.num_labels,
            input_size=geometry.input_size,
            mean=geometry.mean,
            std=geometry.std,
            interpolation=geometry.interpolation,
            metrics=checkpoint_metrics(self.checkpoint_dir) if self.checkpoint_dir else {},
            trust=self.trust,
            checkpoint_dir=self.checkpoint_dir,
        )


def verdict_text(result: Classification, trust: TrustSettings) -> str:
    """One or two plain sentences: the answer and how far to trust its score."""
    best = result.predictions[0]
    if result.unknown:
        return (
            f"Unknown: this image looks like none of the classes this model knows. Its open-set score "
            f"{result.open_set_score:.3g} is below the threshold {result.threshold:.3g} fitted on validation images; "
            f"the closest class would be '{best.label}' ({best.score:.0%})."
        )
    if trust.calibrated:
        return (
            f"{best.label}: {best.score:.0%}. Confidences are calibrated on validation data "
            f"(temperature {trust.temperature:.2f}, expected calibration error {trust.ece_after:.3f}), so "
            f"answers given at about {best.score:.0%} were right about {best.score:.0%} of the time there."
        )
    return (
        f"{best.label}: {best.score:.0%}. These are the model's raw softmax scores: it has not been calibrated "
        "on your images, so read them as a ranking rather than as probabilities."
    )


def iter_image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, sorted) and keep files as given."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            files.append(path)
    return files


# The Trainer writes these next to the weights; later files win for the same key.
_METRIC_FILES = ("all_results.json", "eval_results.json", "test_results.json")


def checkpoint_metrics(directory: str | os.PathLike) -> dict[str, float]:
    """Numeric metrics saved beside a checkpoint (``*_results.json``), if any."""
    metrics: dict[str, float] = {}
    for name in _METRIC_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged metrics file must not stop the model from loading
        metrics.update(
            {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
    return metrics


def classify_files(
    classifier: ImageClassifier, files: Sequence[Path], top_k: int = 5, batch_size: int = 8, progress: bool = True
):
    """Yield ``(path, classification, error)`` per file; an unreadable file is reported, not fatal."""
    from tqdm.auto import tqdm

    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            loaded, failed = [], {}
            for path in chunk:
                try:
                    loaded.append((path, load_image(path)))
                except ImageLoadError as error:
                    failed[path] = str(error)
            results = {}
            if loaded:
                logits = classifier.forward(classifier.preprocess([image for _, image in loaded]))
                results = dict(zip([path for path, _ in loaded], classifier.postprocess(logits, top_k)))
            for path in chunk:
                yield path, results.get(path), failed.get(path)
            bar.update(len(chunk))


def write_predictions_csv(rows, out, top_k: int) -> tuple[int, int]:
    """Write ``classify_files`` rows as CSV; returns (classified, failed) counts."""
    writer = csv.writer(out)
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow([*header, "unknown", "error"])
    ok = bad = 0
    for path, result, error in rows:
        cells = [str(path)]
        for prediction in result.predictions if result else []:
            cells += [prediction.label, f"{prediction.score:.6f}"]
        cells += [""] * (len(header) - len(cells))
        writer.writerow([*cells, "" if result is None else str(result.unknown).lower(), error or ""])
        if error:
            bad += 1
            print(f"skipped: {error}", file=sys.stderr)
        else:
            ok += 1
    return ok, bad


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: classify files and folders into a CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.classification",
        description="Classify images (files or folders) and write the top-k classes as CSV.",
    )
    parser.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", default="default", help="'default', a checkpoint directory, or a hub id")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--csv", default="-", help="output CSV path, or - for standard output (default)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    files = iter_image_files(args.paths)
    if not files:
        parser.error(f"no files found in {', '.join(args.paths)}")
    try:
        classifier = ImageClassifier.from_pretrained(args.model)
    except ModelLoadError as error:
        parser.exit(2, f"error: {error}\n")
    rows = classify_files(classifier, files, top_k=args.top_k, batch_size=args.batch_size)
    if args.csv == "-":
        ok, bad = write_predictions_csv(rows, sys.stdout, args.top_k)
    else:
        with open(args.csv, "w", newline="") as out:
            ok, bad = write_predictions_csv(rows, out, args.top_k)
    print(f"classified {ok} image(s), skipped {bad} unreadable file(s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Image classification: preprocess -> forward -> postprocess, for any saved classifier.

>>> from pipelines.classification import ImageClassifier
>>> classifier = ImageClassifier.from_pretrained("default")
>>> classifier.classify("cat.jpg", top_k=1)[0].label  # doctest: +SKIP
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

from pipelines.checkpoints import ModelLoadError, load_pretrained
from pipelines.image_io import ImageLoadError, load_image

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One class of a classifier's answer."""

    label: str
    score: float
    index: int


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded classifier is, for people (the app's Model tab) and logs."""

    source: str
    architecture: str
    model_type: str
    parameters: int
    num_labels: int
    input_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str | None
    metrics: dict[str, float]


class ImageClassifier:
    """A classifier with its own preprocessing, as saved in its checkpoint."""

    def __init__(self, model, processor, source: str, checkpoint_dir: str | None = None):
        self.model = model.eval()
        self.checkpoint_dir = checkpoint_dir
        self.processor = processor
        self.source = source
        self.id2label = {int(i): name for i, name in model.config.id2label.items()}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default") -> ImageClassifier:
        """Load ``default``, a checkpoint directory or a hub id.

        Raises:
            pipelines.checkpoints.ModelLoadError: with the reason and the fix.
        """
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = load_pretrained(AutoModelForImageClassification, name_or_path)
        processor = load_pretrained(AutoImageProcessor, name_or_path)
        location = model.config._name_or_path
        checkpoint_dir = location if location and Path(location).is_dir() else None
        return cls(model, processor, source=str(name_or_path), checkpoint_dir=checkpoint_dir)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> the ``pixel_values`` batch the checkpoint expects."""
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One model call; returns logits."""
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values).logits

    def postprocess(self, logits: torch.Tensor, top_k: int = 5) -> list[list[Prediction]]:
        """Logits -> the ``top_k`` most likely classes of each image, best first."""
        if self.model.config.problem_type == "multi_label_classification":
            probabilities = logits.float().sigmoid()
        else:
            probabilities = logits.float().softmax(dim=-1)
        k = max(1, min(top_k, probabilities.shape[-1]))
        scores, indices = probabilities.topk(k, dim=-1)
        return [
            [Prediction(self.id2label.get(i, str(i)), float(s), i) for s, i in zip(row_s.tolist(), row_i.tolist())]
            for row_s, row_i in zip(scores, indices)
        ]

    def classify(self, image: ImageSource, top_k: int = 5) -> list[Prediction]:
        """Classify one image (a path, bytes or a PIL image).

        Raises:
            pipelines.image_io.ImageLoadError: the image cannot be read.
        """
        return self.classify_batch([image], top_k=top_k)[0]

    def classify_batch(self, images: Sequence[ImageSource], top_k: int = 5) -> list[list[Prediction]]:
        """Classify several images in one forward pass."""
        rgb = [load_image(image) for image in images]
        return self.postprocess(self.forward(self.preprocess(rgb)), top_k=top_k)

    def describe(self) -> ModelInfo:
        """Architecture, size and preprocessing of the loaded model."""
        config = self.model.config
        spec = preprocessing_summary(self.processor)
        return ModelInfo(
            source=self.source,
            architecture=getattr(config, "architecture", None)
            or (config.architectures or [type(self.model).__name__])[0],
            model_type=config.model_type,
            parameters=sum(p.numel() for p in self.model.parameters()),
            num_labels=config.num_labels,
            metrics=checkpoint_metrics(self.checkpoint_dir) if self.checkpoint_dir else {},
            **spec,
        )


def preprocessing_summary(processor) -> dict:
    """Input size, normalisation and interpolation, read from any image processor."""
    data_config = getattr(processor, "data_config", None)  # timm wrappers keep timm's view
    if data_config:
        return {
            "input_size": tuple(data_config["input_size"][1:]),
            "mean": tuple(data_config["mean"]),
            "std": tuple(data_config["std"]),
            "interpolation": data_config.get("interpolation"),
        }
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if "height" in size:
        input_size = (size["height"], size["width"])
    elif "shortest_edge" in size:
        input_size = (size["shortest_edge"], size["shortest_edge"])
    else:
        input_size = None
    resample = getattr(processor, "resample", None)
    return {
        "input_size": input_size,
        "mean": tuple(processor.image_mean) if getattr(processor, "image_mean", None) is not None else None,
        "std": tuple(processor.image_std) if getattr(processor, "image_std", None) is not None else None,
        "interpolation": getattr(resample, "name", None) and resample.name.lower(),
    }


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
    """Yield ``(path, predictions, error)`` for each file; an unreadable file is reported, not fatal."""
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
                yield path, results.get(path, []), failed.get(path)
            bar.update(len(chunk))


def write_predictions_csv(rows, out, top_k: int) -> tuple[int, int]:
    """Write ``classify_files`` rows as CSV; returns (classified, failed) counts."""
    writer = csv.writer(out)
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"label_{rank}", f"score_{rank}"]
    writer.writerow([*header, "error"])
    ok = bad = 0
    for path, predictions, error in rows:
        cells = [str(path)]
        for prediction in predictions:
            cells += [prediction.label, f"{prediction.score:.6f}"]
        cells += [""] * (len(header) - len(cells))
        writer.writerow([*cells, error or ""])
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

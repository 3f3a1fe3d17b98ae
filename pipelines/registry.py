"""Which classifiers the app offers, loaded lazily and once each."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from common.anomaly_files import is_anomaly_dir
from common.checkpoint_files import CONFIG_FILE
from common.checkpoints import ModelLoadError
from common.default_model import DEFAULT_MODEL
from pipelines.classification import ImageClassifier
from pipelines.runtime import PROJECT_MODELS_DIR, check_runtime

DEFAULT_LABEL = "default: EfficientNet-Lite0, ImageNet-1k (1000 classes)"


@dataclass(frozen=True)
class ModelChoice:
    """A classifier the user can pick: what the dropdown shows and what gets loaded."""

    label: str
    source: str


def is_classifier_checkpoint(directory: Path) -> bool:
    """True for a saved checkpoint whose architecture is an image classifier (not an anomaly detector's backbone)."""
    if is_anomaly_dir(directory):
        return False
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(name.endswith("ForImageClassification") for name in config.get("architectures") or [])


def discover_classifiers(models_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories directly inside ``models_dir`` that hold classifiers."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(child for child in root.iterdir() if child.is_dir() and is_classifier_checkpoint(child))


class ClassifierRegistry:
    """Named classifiers; each is loaded on first use and then shared (thread-safe).

    ``runtime`` (``"auto"``, ``"torch"`` or ``"onnx"``; see ``pipelines.runtime``) is what every
    classifier is loaded with.
    """

    def __init__(self, choices: list[ModelChoice], runtime: str = "auto"):
        if not choices:
            raise ValueError("ClassifierRegistry needs at least one model choice")
        self.runtime = check_runtime(runtime)
        self.choices = choices
        self._by_source = {choice.source: choice for choice in choices}
        self._loaded: dict[str, ImageClassifier] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_sources(
        cls, extra: list[str] = (), models_dir: str | os.PathLike | None = PROJECT_MODELS_DIR, runtime: str = "auto"
    ) -> ClassifierRegistry:
        """The default model, then ``models_dir`` checkpoints, then ``extra`` (paths, exported ones too, or hub ids)."""
        choices = [ModelChoice(DEFAULT_LABEL, DEFAULT_MODEL)]
        found = discover_classifiers(models_dir) if models_dir else []
        for source in [str(path) for path in found] + [str(item) for item in extra]:
            if source not in {choice.source for choice in choices}:
                choices.append(ModelChoice(Path(source).name or source, source))
        return cls(choices, runtime=runtime)

    @property
    def default(self) -> str:
        return self.choices[0].source

    def add(self, label: str, source: str) -> None:
        """Offer one more classifier (a model trained while the app runs); a source already offered is kept as is."""
        with self._lock:
            if source in self._by_source:
                return
            choice = ModelChoice(label, source)
            self._by_source[source] = choice
            self.choices = [*self.choices, choice]  # a new list: readers iterating the old one are undisturbed

    def get(self, source: str | None = None) -> ImageClassifier:
        """The loaded classifier for ``source`` (one of ``choices``).

        Raises:
            ModelLoadError: unknown name, or the checkpoint cannot be loaded.
        """
        source = source or self.default
        if source not in self._by_source:
            known = ", ".join(choice.source for choice in self.choices)
            raise ModelLoadError(f"Unknown model '{source}'. Available: {known}.")
        with self._lock:  # one load per model even when requests arrive together
            if source not in self._loaded:
                self._loaded[source] = ImageClassifier.from_pretrained(source, runtime=self.runtime)
            return self._loaded[source]


class LazySegmenter:
    """The defect segmenter the app serves (with its stage-1 classifier), loaded on first use with ``runtime``."""

    def __init__(
        self, model_dir: str | os.PathLike | None, stage1_dir: str | os.PathLike | None = None, runtime: str = "auto"
    ):
        self.model_dir = None if model_dir is None else str(model_dir)
        self.stage1_dir = None if stage1_dir is None else str(stage1_dir)
        self.runtime = check_runtime(runtime)
        self._segmenter = None
        self._lock = threading.Lock()

    @classmethod
    def from_models_dir(
        cls, models_dir: str | os.PathLike = PROJECT_MODELS_DIR, runtime: str = "auto"
    ) -> LazySegmenter:
        """The embedded demo pair, ``models/steel-segformer`` + ``models/steel-stage1``, when present."""
        root = Path(models_dir)
        model = root / "steel-segformer"
        stage1 = root / "steel-stage1"
        return cls(model if model.is_dir() else None, stage1 if stage1.is_dir() else None, runtime=runtime)

    def get(self):
        """The loaded ``DefectSegmenter``.

        Raises:
            ModelLoadError: no segmentation model configured, or it cannot be loaded.
        """
        from pipelines.segmentation import DefectSegmenter

        if self.model_dir is None:
            raise ModelLoadError(
                "No defect segmentation model is available: put one in models/steel-segformer "
                "(python -m train.segmentation.train ...) or start the app with --segmenter DIR."
            )
        with self._lock:
            if self._segmenter is None:
                # 512-px tiles keep memory bounded on long strips and were no slower than whole images.
                self._segmenter = DefectSegmenter.from_pretrained(
                    self.model_dir, stage1=self.stage1_dir, tile_width=512, runtime=self.runtime
                )
            return self._segmenter

    def labels(self) -> dict[int, str]:
        """Class names of the configured model, read from its config without loading weights."""
        if self.model_dir is None:
            return {}
        try:
            config = json.loads((Path(self.model_dir) / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return {int(index): name for index, name in (config.get("id2label") or {}).items()}


def segmenter_label(segmenter: LazySegmenter) -> str:
    """What a dropdown shows for a configured segmenter: its folder, and its stage 1's."""
    if segmenter.model_dir is None:
        return "none configured"
    name = Path(segmenter.model_dir).name
    return f"{name} + stage 1 {Path(segmenter.stage1_dir).name}" if segmenter.stage1_dir else name


class SegmenterRegistry:
    """The defect segmenters the app offers (the configured pair first), each a :class:`LazySegmenter`.

    Segmenters trained in the Train tab join with :meth:`add` while the app runs. ``get`` and
    ``labels`` without a source answer for the default, as a single ``LazySegmenter`` does.
    """

    def __init__(self, default: LazySegmenter, label: str | None = None):
        self._lock = threading.Lock()
        self._by_source: dict[str, LazySegmenter] = {default.model_dir or "": default}
        self.choices = [ModelChoice(label or segmenter_label(default), default.model_dir or "")]

    @property
    def default(self) -> str:
        return self.choices[0].source

    @property
    def default_segmenter(self) -> LazySegmenter:
        return self._by_source[self.default]

    def add(self, label: str, model_dir: str | os.PathLike) -> None:
        """Offer one more segmenter (no stage 1); with none configured it becomes the default."""
        source = str(model_dir)
        with self._lock:
            if source in self._by_source:
                return
            lazy = LazySegmenter(source, runtime=self.default_segmenter.runtime)
            if self.default_segmenter.model_dir is None:  # "none configured" gives way to a real model
                self._by_source = {source: lazy}
                self.choices = [ModelChoice(label, source)]
                return
            self._by_source[source] = lazy
            self.choices = [*self.choices, ModelChoice(label, source)]  # a new list, as in ClassifierRegistry.add

    def lazy(self, source: str | None = None) -> LazySegmenter:
        """The loader behind ``source`` (the default when empty).

        Raises:
            ModelLoadError: a source that is not offered.
        """
        found = self._by_source.get(source or self.default)
        if found is None:
            known = ", ".join(choice.source for choice in self.choices)
            raise ModelLoadError(f"Unknown segmenter '{source}'. Available: {known}.")
        return found

    def get(self, source: str | None = None):
        """The loaded ``DefectSegmenter`` for ``source``; see :meth:`LazySegmenter.get`."""
        return self.lazy(source).get()

    def labels(self, source: str | None = None) -> dict[int, str]:
        return self.lazy(source).labels()

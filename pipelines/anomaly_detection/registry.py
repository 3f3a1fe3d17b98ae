"""Which anomaly detectors the app offers, each loaded once on first use.

The demo detector ``models/steel-anomaly`` is offered when it is there, then every folder given
with ``--anomaly-model``. Nothing is loaded until a request needs it: building the backbone and
reading the memory bank takes seconds, and most visitors never open the Anomaly tab.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.anomaly_files import AnomalyConfig, AnomalyModelError, is_anomaly_dir, load_anomaly_config
from common.checkpoints import ModelLoadError
from pipelines.anomaly_detection.predict import AnomalyDetector
from pipelines.runtime import PROJECT_MODELS_DIR, check_runtime

# The demo detector's folder inside the models directory.
DEMO_DETECTOR = "steel-anomaly"
# What the app says when there is no detector: how to make one, with the demo's own commands.
TRAIN_HINT = (
    "python -m train.datasets anomaly-steel --out data/anomaly-steel && python -m train.anomaly_detection "
    "--train_dir data/anomaly-steel --image_size 320x160 --output_dir models/steel-anomaly"
)


@dataclass(frozen=True)
class DetectorChoice:
    """A detector the user can pick: what the dropdown shows and the folder that is loaded."""

    label: str
    source: str


class AnomalyDetectors:
    """Named anomaly detectors; each is loaded on first use and then shared (thread-safe).

    Args:
        choices: The detectors on offer, the first one the default; may be empty (the app then
            says how to train one).
        runtime: What embeds the patches for every detector (``AnomalyDetector.from_pretrained``):
            the app's ``--runtime``, as for its other models.
    """

    def __init__(self, choices: Sequence[DetectorChoice] = (), runtime: str = "auto") -> None:
        check_runtime(runtime)
        self.runtime = runtime
        self.choices = list(choices)
        self._by_source = {choice.source: choice for choice in self.choices}
        self._loaded: dict[str, AnomalyDetector] = {}
        self._configs: dict[str, AnomalyConfig] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_sources(
        cls,
        extra: Sequence[str | os.PathLike] = (),
        models_dir: str | os.PathLike | None = PROJECT_MODELS_DIR,
        runtime: str = "auto",
    ) -> AnomalyDetectors:
        """The demo detector (``models_dir/steel-anomaly``) when it is there, then ``extra`` folders in order."""
        sources = []
        if models_dir is not None and is_anomaly_dir(Path(models_dir) / DEMO_DETECTOR):
            sources.append(str(Path(models_dir) / DEMO_DETECTOR))
        sources += [str(item) for item in extra]
        choices = []
        for source in dict.fromkeys(sources):  # a folder given twice is offered once
            choices.append(DetectorChoice(Path(source).name or source, source))
        return cls(choices, runtime=runtime)

    @property
    def default(self) -> str | None:
        """The first detector's source; None when there is none."""
        return self.choices[0].source if self.choices else None

    def check(self) -> None:
        """Refuse, before the app serves, a detector folder that is missing or holds no detector.

        Reads only each ``anomaly.json``, not the weights.

        Raises:
            ModelLoadError: naming the folder and the fix.
        """
        for choice in self.choices:
            self.config(choice.source)

    def _known(self, source: str | None) -> str:
        if not self.choices:
            raise ModelLoadError(
                "No anomaly detector is available. Train one on good images, e.g. the demo's: "
                f"{TRAIN_HINT}; or start the app with --anomaly-model DIR."
            )
        source = source or self.default
        if source not in self._by_source:
            known = ", ".join(choice.source for choice in self.choices)
            raise ModelLoadError(f"Unknown anomaly detector '{source}'. Available: {known}.")
        return source

    def config(self, source: str | None = None) -> AnomalyConfig:
        """A detector's ``anomaly.json`` (products, thresholds, held-out scores), read once, without its weights.

        Raises:
            ModelLoadError: unknown name, or a folder that holds no (readable) detector.
        """
        source = self._known(source)
        if source in self._loaded:
            return self._loaded[source].config
        if source not in self._configs:
            if not Path(source).is_dir():
                raise ModelLoadError(
                    f"Anomaly detector '{source}' is not a folder. Give --anomaly-model the folder written by "
                    "python -m train.anomaly_detection."
                )
            try:
                self._configs[source] = load_anomaly_config(source)
            except AnomalyModelError as error:
                raise ModelLoadError(str(error)) from error
        return self._configs[source]

    def products(self, source: str | None = None) -> list[str]:
        """The products a detector has a memory bank for, in training order (see :meth:`config`)."""
        return list(self.config(source).products)

    def get(self, source: str | None = None) -> AnomalyDetector:
        """The loaded detector for ``source`` (one of ``choices``; the default when None).

        Raises:
            ModelLoadError: no detector at all, an unknown name, or a folder that cannot be loaded.
        """
        source = self._known(source)
        with self._lock:  # one load per detector even when requests arrive together
            if source not in self._loaded:
                self._loaded[source] = AnomalyDetector.from_pretrained(source, runtime=self.runtime)
            return self._loaded[source]

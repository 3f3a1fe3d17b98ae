"""Load every model the app offers once, so that the first request does not wait for it.

The first load of the default model converts its weights, and the first load of each checkpoint
in ``models/`` exports its ONNX graph into the cache (``common.onnx_cache``); for the demo
segmenter that takes from under a minute to a few on 2 cores. A container image runs this at
build time, and anyone can run it before starting the app::

    python -m pipelines.prepare [--models-dir models] [--runtime auto]

It prints the runtime that serves each model and exits non-zero when one cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from common.checkpoints import ModelLoadError
from pipelines.anomaly_detection.registry import AnomalyDetectors
from pipelines.registry import ClassifierRegistry, LazySegmenter
from pipelines.runtime import PROJECT_MODELS_DIR, RUNTIME_HELP, RUNTIMES


def prepare(
    registry: ClassifierRegistry, segmenter: LazySegmenter, detectors: AnomalyDetectors | None = None
) -> list[tuple[str, str, float]]:
    """Load every classifier of ``registry``, the segmenter pair and every anomaly detector.

    Returns:
        ``(source, runtime, seconds)`` of each model.

    Raises:
        ModelLoadError: a model cannot be loaded (the message names it).
    """
    loaded = []
    for choice in registry.choices:
        start = time.perf_counter()
        classifier = registry.get(choice.source)
        loaded.append((choice.source, classifier.runtime, time.perf_counter() - start))
    if segmenter.model_dir is not None:
        start = time.perf_counter()
        pair = segmenter.get()
        seconds = time.perf_counter() - start
        loaded.append((segmenter.model_dir, pair.runtime, seconds))
        if pair.stage1 is not None:
            loaded.append((segmenter.stage1_dir, pair.stage1.runtime, 0.0))
    for choice in detectors.choices if detectors is not None else ():
        start = time.perf_counter()
        detector = detectors.get(choice.source)
        loaded.append((choice.source, detector.runtime, time.perf_counter() - start))
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(PROJECT_MODELS_DIR), help="the app's models folder")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=f"for every model, {RUNTIME_HELP}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = ClassifierRegistry.from_sources(models_dir=args.models_dir, runtime=args.runtime)
    segmenter = LazySegmenter.from_models_dir(args.models_dir, runtime=args.runtime)
    detectors = AnomalyDetectors.from_sources(models_dir=args.models_dir, runtime=args.runtime)
    try:
        loaded = prepare(registry, segmenter, detectors)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for source, runtime, seconds in loaded:
        print(f"{source}: served by {runtime} (loaded in {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

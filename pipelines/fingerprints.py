"""Which weights answered: the SHA-256 of the files behind a loaded pipeline's forward pass.

The REST API returns it with every answer and the inspection log stores it with every decision,
so both say exactly which weights decided, even after a checkpoint directory is overwritten with
a retrained model. One process-wide cache: each loaded model is hashed once, on first use.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from pathlib import Path

from common.checkpoint_files import WEIGHTS_FILE

__all__ = ["model_fingerprint", "served_weight_files", "sha256_of_files"]

_CHUNK = 1024 * 1024
# Keyed by the pipeline object, not by its folder: a reloaded model is a new object, possibly with
# new weights, while a model already in memory keeps the fingerprint of the weights it loaded even
# when its files are overwritten later. Weak keys: a model the app drops is not kept alive here.
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def served_weight_files(pipeline) -> list[Path]:
    """The files behind a loaded pipeline's forward pass, in name order; [] for a hub id.

    Under ONNX Runtime that is the graph (``model.onnx``, from the export cache for the
    embedded models) with any external-data file beside it; under PyTorch the checkpoint's
    ``model*.safetensors`` (or, for old checkpoints, ``pytorch_model*.bin``). A pipeline that
    names its own files (an anomaly detector: its memory banks and backbone) is taken at its word.
    """
    own_files = getattr(pipeline, "weight_files", None)
    if callable(own_files):
        return own_files()
    onnx_file = pipeline.served.onnx_file
    if onnx_file is not None:
        graph = Path(onnx_file)
        return sorted(graph.parent.glob(f"{graph.name}*"))
    location = pipeline.model.config._name_or_path
    folder = Path(location) if location and Path(location).is_dir() else None
    if folder is None:
        return []
    from transformers.utils import WEIGHTS_NAME  # pytorch_model.bin, what old checkpoints carry

    # Sharded checkpoints split model.safetensors into model-00001-of-0000N.safetensors and so on.
    return sorted(folder.glob(sharded(WEIGHTS_FILE))) or sorted(folder.glob(sharded(WEIGHTS_NAME)))


def sharded(file_name: str) -> str:
    """A glob for ``file_name`` and its shards: ``model.safetensors`` -> ``model*.safetensors``."""
    path = Path(file_name)
    return f"{path.stem}*{path.suffix}"


def sha256_of_files(paths: list[Path]) -> str:
    """SHA-256 of the files' bytes one after the other; for one file, what ``sha256sum`` prints."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(pipeline) -> str | None:
    """SHA-256 (hex) of the weights serving ``pipeline`` (see :func:`served_weight_files`); None for a hub id.

    Hashed on first use and then remembered for as long as the pipeline lives: hashing 20 MB per
    request would cost more than classifying.

    >>> model_fingerprint(ImageClassifier.from_pretrained("models/parts"))  # doctest: +SKIP
    '3f1c...'
    """
    with _lock:  # hash each model once, even when its first requests arrive together
        if pipeline not in _fingerprints:
            files = served_weight_files(pipeline)
            _fingerprints[pipeline] = sha256_of_files(files) if files else None
        return _fingerprints[pipeline]

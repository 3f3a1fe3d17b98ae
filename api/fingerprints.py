"""Which weight files answered a request, as a SHA-256 computed once per model.

A client that stores the fingerprint with each answer can tell later exactly which weights gave
it, even after a checkpoint directory was overwritten with a retrained model.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from common.checkpoint_files import WEIGHTS_FILE

_CHUNK = 1024 * 1024


def served_weight_files(pipeline) -> list[Path]:
    """The files behind a loaded pipeline's forward pass, in name order; [] for a hub id.

    Under ONNX Runtime that is the graph (``model.onnx``, from the export cache for the
    embedded models) with any external-data file beside it; under PyTorch the checkpoint's
    ``model*.safetensors`` (or, for old checkpoints, ``pytorch_model*.bin``).
    """
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


class Fingerprints:
    """SHA-256 of each loaded pipeline's served weights, hashed on first use and then remembered."""

    def __init__(self):
        self._known: dict[int, tuple[object, str | None]] = {}
        self._lock = threading.Lock()

    def of(self, pipeline) -> str | None:
        # Keyed by the pipeline object (kept alive here, so its id is never reused): a reloaded
        # model is a new object, possibly with new weights.
        key = id(pipeline)
        with self._lock:  # hash each model once even when its first requests arrive together
            if key not in self._known:
                files = served_weight_files(pipeline)
                self._known[key] = (pipeline, sha256_of_files(files) if files else None)
            return self._known[key][1]

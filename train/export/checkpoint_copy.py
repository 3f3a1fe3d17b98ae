"""What an exported checkpoint directory carries, and writing it so that it appears whole or not at all.

An export is a served checkpoint: the configuration (labels, minimum areas, the timm
``pretrained_cfg`` that is the default model's processor), the processor, ``calibration.json``,
the model card, metrics and report plots are copied unchanged; the intermediate
``checkpoint-*`` folders, optimizer state, ``training_args.bin`` and the trainer's bookkeeping
are not. Each format then writes its own files (weights, ``model.onnx``, the parity report)
into a staging folder beside the destination, which is renamed into place only when
everything is written and checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.checkpoint_files import (
    ALL_RESULTS_FILE,
    EXPORT_REPORT_FILE,
    SHIPPED_FILE_MODE,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
)
from common.checkpoints import resolve_checkpoint
from common.default_model import DEFAULT_MODEL

# Everything a served checkpoint needs or shows; anything else in a run directory is training state.
KEPT_SUFFIXES = (".json", ".png", ".csv", ".md", ".txt")
# A source's own export report describes a graph that is not copied (each format writes its own).
SKIPPED_NAMES = {TRAINER_STATE_FILE, ALL_RESULTS_FILE, EXPORT_REPORT_FILE}
SHIPPED_DIR_MODE = 0o755


class ExportError(Exception):
    """A checkpoint that cannot be exported, with the reason and the fix."""


class ParityError(ExportError):
    """An export that answers too differently from eager; ``report`` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def resolve_source(source: str | os.PathLike) -> Path:
    """``default`` (the embedded model, built into its cache on first use) or a directory, as a path.

    Anything else is taken as a path, and :func:`check_export_paths` says what it lacks: an
    export reads local files only, never a hub id.
    """
    if str(source).strip() == DEFAULT_MODEL:
        return Path(resolve_checkpoint(DEFAULT_MODEL)[0])
    return Path(source)


def check_export_paths(source: Path, destination: Path, overwrite: bool, *, weights: bool = True) -> None:
    """Refuse what cannot be exported before any work is done.

    Args:
        weights: Require ``model.safetensors`` (an anomaly detector on the default backbone has none).

    Raises:
        ExportError: no ``model.safetensors`` in ``source`` (e.g. a sharded or .bin checkpoint),
            ``destination`` is ``source``, or ``destination`` is not empty and ``overwrite`` is off.
    """
    if weights and not (source / WEIGHTS_FILE).is_file():
        raise ExportError(f"{source} has no {WEIGHTS_FILE}; pass a directory written by save_pretrained (one file).")
    if source.resolve() == destination.resolve():
        raise ExportError("The destination is the source; export to another directory.")
    if destination.exists() and not destination.is_dir():
        raise ExportError(f"{destination} is a file; give a directory to write the export to.")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ExportError(f"{destination} is not empty; pass --overwrite to replace it.")


def copy_served_files(source: Path, staging: Path, *, weights: bool) -> list[str]:
    """Copy the files a served checkpoint carries from ``source`` into ``staging``.

    Args:
        weights: Also copy ``model.safetensors`` unchanged (an ONNX export keeps the eager
            weights beside the graph, for Grad-CAM); the float16 export writes its own.

    Returns:
        The names copied, sorted.
    """
    copied = []
    for path in sorted(source.iterdir()):
        kept = path.suffix in KEPT_SUFFIXES and path.name not in SKIPPED_NAMES
        if path.is_file() and (kept or (weights and path.name == WEIGHTS_FILE)):
            shutil.copy2(path, staging / path.name)
            (staging / path.name).chmod(SHIPPED_FILE_MODE)
            copied.append(path.name)
    return copied


@contextlib.contextmanager
def staged_directory(destination: Path, overwrite: bool) -> Iterator[Path]:
    """An empty folder beside ``destination`` that becomes ``destination`` when the block succeeds.

    On any exception (a failed export, a parity floor missed, Ctrl-C) the staging folder is
    removed and ``destination`` is left as it was. When the block succeeds, an existing
    ``destination`` (allowed only with ``overwrite``) is moved aside, the staging folder is
    renamed in, and only then is the old one deleted: at no point is there a half-written one.

    Raises:
        ExportError: ``destination`` is not empty and ``overwrite`` is off (checked again at
            the end, in case something was written there meanwhile).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Beside the destination, so the final rename stays on one file system and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield staging
        staging.chmod(SHIPPED_DIR_MODE)
        _move_into_place(staging, destination, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, destination: Path, overwrite: bool) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    if any(destination.iterdir()) and not overwrite:
        raise ExportError(f"{destination} is not empty; pass --overwrite to replace it.")
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
    os.replace(destination, old / destination.name)
    try:
        staging.rename(destination)
    except OSError:
        os.replace(old / destination.name, destination)  # put the previous export back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)

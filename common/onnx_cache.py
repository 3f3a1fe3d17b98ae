"""ONNX exports of the checkpoints this project ships, built once into the cache beside the default model.

The demo checkpoints under ``models/`` are in git and stay as they are; their ONNX graphs are
exported on first use into ``cache_root()/onnx/<name>-<sha256 of the weights>/`` (``model.onnx``
and ``export_report.json``), checked against eager (``common.onnx_network.export_checked``), and
served from there. Like the default model's build, a folder is written to a temporary sibling
and renamed into place, with a stamp that names the weights and config it was made from, so new
weights get a new folder and a half-written one is never used.

A failed export is stamped too, with its reason: the model is served by PyTorch, and the export
is not retried at every start (a new ``EXPORT_VERSION``, new weights or deleting the folder
retries it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from common.checkpoint_files import CONFIG_FILE, EXPORT_REPORT_FILE, ONNX_FILE, WEIGHTS_FILE
from common.default_model import cache_root
from common.onnx_network import OnnxExportError, export_checked, write_export_report

# Bump when the export or its check changes, so stale exports are rebuilt instead of reused.
EXPORT_VERSION = 1
_STAMP = "vispect_export.json"
CACHE_FOLDER = "onnx"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_stamp(checkpoint_dir: Path) -> dict:
    return {
        "version": EXPORT_VERSION,
        "weights_sha256": _sha256(checkpoint_dir / WEIGHTS_FILE),
        "config_sha256": _sha256(checkpoint_dir / CONFIG_FILE),
    }


def _folder(checkpoint_dir: Path, stamp: dict, root: str | os.PathLike | None) -> Path:
    """Where the export lives: a folder named after the checkpoint and its weights' sha256."""
    base = Path(root) if root is not None else cache_root() / CACHE_FOLDER
    return base / f"{checkpoint_dir.name}-{stamp['weights_sha256'][:16]}"


def _stamp_state(folder: Path, expected: dict) -> tuple[bool, str | None]:
    """(complete, recorded export error) of a cache folder."""
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False, None
    if not isinstance(stamp, dict) or {key: stamp.get(key) for key in expected} != expected:
        return False, None
    if stamp.get("error"):
        return True, stamp["error"]
    return all((folder / name).is_file() for name in (ONNX_FILE, EXPORT_REPORT_FILE)), None


def cached_export(
    checkpoint_dir: str | os.PathLike,
    model: torch.nn.Module,
    check_inputs: Callable[[], Sequence[torch.Tensor]],
    *,
    segmentation: bool = False,
    dynamic_size: bool = False,
    root: str | os.PathLike | None = None,
) -> Path:
    """The cache folder holding the checked ONNX export of ``checkpoint_dir``, exported on first use.

    Args:
        checkpoint_dir: A local checkpoint directory (it is only read).
        model: Its model, loaded in float32 as it is served.
        check_inputs: Makes the ``pixel_values`` batches to check the export on (called only
            when exporting); the first is the export example.
        segmentation: Check label maps instead of top-1 classes.
        dynamic_size: Export with dynamic height and width.
        root: The folder exports go to; by default ``cache_root()/onnx``.

    Returns:
        A folder with ``model.onnx`` and ``export_report.json``.

    Raises:
        OnnxExportError: The export or its check failed, now or on an earlier run (the
            message has the reason), or the cache cannot be written.
    """
    checkpoint_dir = Path(checkpoint_dir)
    expected = _expected_stamp(checkpoint_dir)
    target = _folder(checkpoint_dir, expected, root)
    complete, error = _stamp_state(target, expected)
    if complete:
        if error:
            raise OnnxExportError(f"{error} (recorded in {target}; delete that folder to try again)")
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as error:
        raise OnnxExportError(f"cannot write the ONNX cache at {target.parent}: {error.strerror}") from error
    try:
        try:
            report = export_checked(
                model, check_inputs(), staging / ONNX_FILE, segmentation=segmentation, dynamic_size=dynamic_size
            )
            report["exported_from"] = str(checkpoint_dir)
            write_export_report(staging, report)
            failure = None
        except OnnxExportError as error:
            failure = str(error)
        (staging / _STAMP).write_text(json.dumps({**expected, "error": failure}))
        # Another process (or thread) may have finished first; its copy is as good as ours, and
        # it may be serving from it, so it is kept. Anything else there is stale or broken.
        if not _stamp_state(target, expected)[0]:
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging, target)
            except OSError:
                if not _stamp_state(target, expected)[0]:
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _, recorded = _stamp_state(target, expected)  # ours, or the copy another process made first
    if recorded:
        raise OnnxExportError(recorded)
    return target

"""``--format safetensors``: the checkpoint with its floating-point weights cast to float16 (or bfloat16).

Half the bytes of float32 and nothing else changes: the pipelines load weights as float32
(CPU kernels for float16 are slow or missing), so only the rounding to float16 remains, which
the held-out benchmark measures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.checkpoint_files import CONFIG_FILE, MODEL_CARD_FILE, SHIPPED_FILE_MODE, WEIGHTS_FILE
from train import report
from train.export.checkpoint_copy import (
    check_export_paths,
    copy_served_files,
    resolve_source,
    staged_directory,
)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def export(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    dtype: str = "float16",
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, int]:
    """Write ``destination``: ``source`` with floating-point weights in ``dtype``.

    Args:
        command: How the export was run, for the model card's "Export" section.

    Returns:
        ``{"tensors": n, "cast": n_cast, "bytes": size of the new weights file}``.

    Raises:
        ExportError: no ``model.safetensors`` in ``source`` (e.g. a sharded or .bin checkpoint),
            ``destination`` is ``source``, or ``destination`` is not empty and ``overwrite`` is off.
    """
    source, destination = resolve_source(source), Path(destination)
    check_export_paths(source, destination, overwrite)
    tensors = load_file(source / WEIGHTS_FILE)
    cast = {name: t.to(DTYPES[dtype]) if t.is_floating_point() else t for name, t in tensors.items()}
    with staged_directory(destination, overwrite) as staging:
        save_file(cast, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        (staging / WEIGHTS_FILE).chmod(SHIPPED_FILE_MODE)
        copy_served_files(source, staging, weights=False)
        config_path = staging / CONFIG_FILE
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            config["dtype"] = dtype
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        weights_bytes = (staging / WEIGHTS_FILE).stat().st_size
        if command:
            note_export(staging / MODEL_CARD_FILE, command, dtype, weights_bytes)
    return {
        "tensors": len(tensors),
        "cast": sum(t.is_floating_point() for t in tensors.values()),
        "bytes": weights_bytes,
    }


def note_export(card: Path, command: str, dtype: str, weights_bytes: int) -> None:
    """Say in the model card (when there is one) how the shipped weights were made."""
    report.set_card_section(
        card,
        "Export",
        f"The weights here are the trained model's cast to {dtype} ({weights_bytes / 2**20:.1f} MiB); "
        f"the pipelines load them as float32. Made with:\n\n```bash\n{command}\n```",
    )

"""Copy a trained checkpoint directory with its weights cast to float16, for shipping.

    python -m train.export build/runs/steel-segformer models/steel-segformer

Half the bytes of float32 and nothing else changes: the pipelines load weights as float32
(CPU kernels for float16 are slow or missing), so only the rounding to float16 remains, which
the held-out benchmark measures. What is copied: the configuration, the processor, the model
card (with the export command appended), metrics, calibration and the report plots; not the
intermediate ``checkpoint-*`` folders, the optimizer state or ``training_args.bin``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.checkpoint_files import ALL_RESULTS_FILE, CONFIG_FILE, MODEL_CARD_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE
from train import report

# Everything a served checkpoint needs or shows; anything else in a run directory is training state.
KEPT_SUFFIXES = (".json", ".png", ".csv", ".md", ".txt")
SKIPPED_NAMES = {TRAINER_STATE_FILE, ALL_RESULTS_FILE}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class ExportError(Exception):
    """A checkpoint that cannot be exported, with the reason and the fix."""


def export(source: Path, destination: Path, dtype: str = "float16", overwrite: bool = False) -> dict[str, int]:
    """Write ``destination``: ``source`` with floating-point weights in ``dtype``.

    Returns:
        ``{"tensors": n, "cast": n_cast, "bytes": size of the new weights file}``.

    Raises:
        ExportError: no ``model.safetensors`` in ``source`` (e.g. a sharded or .bin checkpoint),
            ``destination`` is ``source``, or ``destination`` is not empty and ``overwrite`` is off.
    """
    source, destination = Path(source), Path(destination)
    if not (source / WEIGHTS_FILE).is_file():
        raise ExportError(f"{source} has no {WEIGHTS_FILE}; pass a directory written by save_pretrained (one file).")
    if source.resolve() == destination.resolve():
        raise ExportError("The destination is the source; export to another directory.")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ExportError(f"{destination} is not empty; pass --overwrite to replace it.")
    tensors = load_file(source / WEIGHTS_FILE)
    cast = {name: t.to(DTYPES[dtype]) if t.is_floating_point() else t for name, t in tensors.items()}

    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(cast, staging / WEIGHTS_FILE, metadata={"format": "pt"})
    # safetensors writes the file owner-only; a model meant to be shipped is readable by all.
    (staging / WEIGHTS_FILE).chmod(0o644)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in KEPT_SUFFIXES and path.name not in SKIPPED_NAMES:
            shutil.copy2(path, staging / path.name)
    config_path = staging / CONFIG_FILE
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["dtype"] = dtype
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # Replace the destination only once the new copy is complete.
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return {
        "tensors": len(tensors),
        "cast": sum(t.is_floating_point() for t in tensors.values()),
        "bytes": (destination / WEIGHTS_FILE).stat().st_size,
    }


def note_export(card: Path, command: str, dtype: str, weights_bytes: int) -> None:
    """Say in the model card (when there is one) how the shipped weights were made."""
    report.set_card_section(
        card,
        "Export",
        f"The weights here are the trained model's cast to {dtype} ({weights_bytes / 2**20:.1f} MiB); "
        f"the pipelines load them as float32. Made with:\n\n```bash\n{command}\n```",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a trained checkpoint directory (save_pretrained output)")
    parser.add_argument("destination", help="the directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    args = parser.parse_args(argv)
    try:
        result = export(Path(args.source), Path(args.destination), args.dtype, args.overwrite)
    except ExportError as error:
        parser.exit(2, f"error: {error}\n")
    command = " ".join(["python -m train.export", *(sys.argv[1:] if argv is None else argv)])
    note_export(Path(args.destination) / MODEL_CARD_FILE, command, args.dtype, result["bytes"])
    print(
        f"wrote {args.destination}: {result['cast']} of {result['tensors']} tensors in {args.dtype}, "
        f"weights {result['bytes'] / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

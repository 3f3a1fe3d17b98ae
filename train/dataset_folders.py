"""What every ``python -m train.datasets`` writer shares: the ``--out`` check and the printed summary."""

from __future__ import annotations

from pathlib import Path


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty folder as ``--out`` unless ``overwrite`` is set.

    Raises:
        ValueError: If ``out`` cannot be written to as asked.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"--out {out} is not empty; choose a new folder, or pass --overwrite to replace the data set in it"
        )


def format_summary(info: dict) -> str:
    """A table of images per class (rows) and split (columns), plus the non-part images."""
    counts = info["counts"]
    splits = list(counts)
    width = max(len("total"), *(len(name) for name in info["classes"]))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{split:>10}" for split in splits)]
    for name in info["classes"]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[split][name]:>10}" for split in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(counts[split].values()):>10}" for split in splits))
    for subset, count in info.get("other_counts", {}).items():
        lines.append(f"other/{subset}: {count} images (no class, no mask)")
    return "\n".join(lines)

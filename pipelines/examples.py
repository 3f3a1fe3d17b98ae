"""Example photos that ship inside installed packages, so the app needs no downloads."""

from __future__ import annotations

from pathlib import Path

# Real photographs from scikit-image's bundled data (public domain / CC0, see its
# data/README.txt), with the ImageNet classes a good model should give them.
_SKIMAGE_PHOTOS = {
    "chelsea.png": ("tiger cat", "Egyptian cat", "tabby, tabby cat"),
    "coffee.png": ("espresso",),
    "motorcycle_left.png": ("moped", "motor scooter, scooter"),
    "camera.png": ("tripod",),
    "rocket.jpg": ("missile", "projectile, missile"),
}


def skimage_data_dir() -> Path | None:
    """scikit-image's bundled data folder, or None when scikit-image is not installed."""
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data"


def example_photos() -> dict[Path, tuple[str, ...]]:
    """Bundled photos that exist on this machine, each with its acceptable ImageNet labels."""
    folder = skimage_data_dir()
    if folder is None:
        return {}
    return {folder / name: labels for name, labels in _SKIMAGE_PHOTOS.items() if (folder / name).is_file()}

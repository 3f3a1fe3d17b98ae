"""Shared fixtures: tiny random checkpoints, the real default model, generated images."""

from __future__ import annotations

import os
import tempfile

# Tests never touch the network: a hub id must fail fast with our message, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Nor the user's inspection log: app.py started without --log-db (here or in a subprocess, which
# inherits this) logs to a throw-away data folder, not to ~/.local/share/vispect.
os.environ["VISPECT_DATA"] = tempfile.mkdtemp(prefix="vispect-test-data-")

import numpy as np
import pytest
import torch
from PIL import Image

from tests.inspection_databases import DATABASES, database_url, log_opener

TINY_LABELS = {0: "gear", 1: "hex nut", 2: "washer"}


def _save_tiny(model, processor, directory):
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_vit_config(id2label: dict[int, str], **extra):
    """A 1-layer ViT config for 32x32 inputs (4x4 patches of 8 pixels)."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        **extra,
    )


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory):
    """A 1-layer ViT classifier with 3 labels, saved with save_pretrained."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = tiny_vit_config(TINY_LABELS)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    return _save_tiny(ViTForImageClassification(config), processor, tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory):
    """A 2-stage ResNet classifier with 3 labels, saved with save_pretrained."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
    )
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    return _save_tiny(ResNetForImageClassification(config), processor, tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def default_dir():
    """The converted default checkpoint (built once into the user's cache, then reused)."""
    from common.default_model import default_checkpoint_dir

    return default_checkpoint_dir()


@pytest.fixture
def photo_file(tmp_path):
    """A random RGB photo-sized JPEG."""
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_timm_dir(tmp_path_factory):
    """timm's test_efficientnet wrapped as a transformers checkpoint (like the default model)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    config = TimmWrapperConfig(
        architecture="test_efficientnet",
        num_labels=3,
        id2label=TINY_LABELS,
        label2id={v: k for k, v in TINY_LABELS.items()},
        pretrained_cfg={"input_size": [3, 48, 48], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0},
    )
    directory = tmp_path_factory.mktemp("tiny-timm")
    TimmWrapperForImageClassification(config).save_pretrained(directory)
    return directory


COLOURS = {"red": (200, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 210)}


def write_colour_folders(root, per_split=None, seed=0, size=40):
    """An imagefolder of noisy colour patches: classes any model learns in a few steps."""
    from pathlib import Path

    per_split = per_split or {"train": 12, "validation": 6, "test": 6}
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in per_split.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 35, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    for split in ("validation", "test"):
        folder = root / "other" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(6):  # grey and striped images: none of the colours
            grey = np.full((size, size, 3), rng.integers(60, 200), dtype=np.uint8)
            grey[:, ::4] = 255 - grey[:, ::4]
            Image.fromarray(grey).save(folder / f"other_{i}.png")
    return root


@pytest.fixture(scope="session")
def colour_folders(tmp_path_factory):
    return write_colour_folders(tmp_path_factory.mktemp("colours"))


def tiny_segformer_config(id2label: dict[int, str]):
    """The smallest SegFormer that still has all four encoder stages (transformers' own test sizes)."""
    from transformers import SegformerConfig

    return SegformerConfig(
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 8, 16, 16],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=16,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )


def save_tiny_stage1(directory, labels, biases):
    """A multi-label ViT stage 1 whose sigmoid outputs are ``sigmoid(bias)`` whatever the image."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = tiny_vit_config(dict(enumerate(labels)), problem_type="multi_label_classification")
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(biases, dtype=torch.float32))
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def export_onnx_copy(source, directory, dynamic_size=False):
    """``source`` copied to ``directory`` with ``model.onnx`` beside its weights, as ``train.export`` writes it.

    The graph is exported at the size the checkpoint's processor makes (a segmenter's at 64x128,
    with dynamic height and width when ``dynamic_size``).
    """
    import shutil

    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSemanticSegmentation

    from common.checkpoint_files import ONNX_FILE
    from common.onnx_network import export_network
    from common.preprocessing import input_geometry
    from pipelines.classification import ImageClassifier

    shutil.copytree(source, directory)
    architectures = AutoConfig.from_pretrained(directory).architectures or []
    if any(name.endswith("ForSemanticSegmentation") for name in architectures):
        model = AutoModelForSemanticSegmentation.from_pretrained(directory).eval()
        size = (64, 128)
    else:
        model = AutoModelForImageClassification.from_pretrained(directory).eval()
        size = input_geometry(ImageClassifier.from_pretrained(directory, runtime="torch").processor).input_size
    export_network(model, torch.randn(2, 3, *size), directory / ONNX_FILE, dynamic_size=dynamic_size)
    return directory


@pytest.fixture(scope="session")
def tiny_vit_onnx_dir(tiny_vit_dir, tmp_path_factory):
    """``tiny_vit_dir`` with an ONNX export (32x32, dynamic batch) beside its weights."""
    return export_onnx_copy(tiny_vit_dir, tmp_path_factory.mktemp("exported") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_resnet_onnx_dir(tiny_resnet_dir, tmp_path_factory):
    """``tiny_resnet_dir`` with an ONNX export (32x32, dynamic batch) beside its weights."""
    return export_onnx_copy(tiny_resnet_dir, tmp_path_factory.mktemp("exported") / "tiny-resnet")


def noise_png_bytes(seed: int = 0, size: tuple[int, int] = (24, 24)) -> bytes:
    """A PNG file's bytes: seeded RGB noise, ``size`` = (width, height)."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_folder(folder, archive):
    """``folder`` zipped under one top folder of its name, as a file manager zips it; returns ``archive``."""
    import zipfile
    from pathlib import Path

    folder = Path(folder)
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                opened.write(path, Path(folder.name) / path.relative_to(folder))
    return archive


def write_zip(path, members: dict[str, bytes], compression=None):
    """A zip at ``path`` holding ``members`` (name -> bytes), deflated unless told otherwise."""
    import zipfile

    with zipfile.ZipFile(
        path, "w", compression=zipfile.ZIP_DEFLATED if compression is None else compression
    ) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(params=DATABASES)
def log_url(request, tmp_path):
    """An empty inspection-log database: an SQLite file, then (when one is given) a PostgreSQL schema."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def open_log(log_url, tmp_path):
    """``open_log(**options)`` opens ``InspectionLog``s on ``log_url``; all are closed after the test."""
    with log_opener(log_url, tmp_path / "store") as open_:
        yield open_

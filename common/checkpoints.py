"""Resolve what a user names as a model (``default``, a directory, a hub id) and load it.

Loading is the one place where untrusted files meet the model code, so it is strict:
never ``trust_remote_code``, and weights only as safetensors or through transformers'
``weights_only=True`` loader.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError

from common.checkpoint_files import CONFIG_FILE, SHIPPED_FILE_MODE
from common.default_model import DEFAULT_MODEL, default_checkpoint_dir

# "owner/name" or "name" with the characters the Hub allows; anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


def share_saved_weights(directory: str | os.PathLike) -> None:
    """Make the ``*.safetensors`` that ``save_pretrained`` just wrote in ``directory`` readable by all.

    safetensors (0.8) creates them owner-only (0600), so a container's app user, or a colleague
    serving the folder, could not read a model trained by someone else.
    """
    for path in Path(directory).glob("*.safetensors"):
        path.chmod(SHIPPED_FILE_MODE)


def hub_offline() -> bool:
    """True when the user asked the Hub libraries to stay offline (``HF_HUB_OFFLINE=1``)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(hub_constants.HF_HUB_OFFLINE)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """Turn a model name into something ``from_pretrained`` takes.

    Returns:
        ``(location, is_local)``: a directory path, or a hub id.

    Raises:
        ModelLoadError: a path that is not a checkpoint directory.
    """
    text = str(name_or_path).strip()
    if text == DEFAULT_MODEL:
        return str(default_checkpoint_dir()), True
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"Model '{text}' is a file; give the checkpoint directory that holds config.json "
                "(the folder written by save_pretrained or by python -m train...)."
            )
        if not (path / CONFIG_FILE).is_file():
            raise ModelLoadError(
                f"Model directory '{text}' has no config.json, so it is not a saved checkpoint. "
                "Point to the folder written by save_pretrained (it holds config.json and model.safetensors)."
            )
        return str(path), True
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1)
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelLoadError(f"Model directory '{text}' does not exist. Check the path, or use 'default'.")
    return text, False


def load_pretrained(auto_class, name_or_path: str | os.PathLike, **kwargs):
    """Load ``auto_class`` (a transformers Auto* class) from a name, path or hub id.

    A hub id is tried from the local cache first, and online only when the Hub is not
    switched off; when neither works the error says so and suggests a local directory.
    """
    location, is_local = resolve_checkpoint(name_or_path)
    options = {"trust_remote_code": False, **kwargs}
    if is_local:
        try:
            return auto_class.from_pretrained(location, local_files_only=True, **options)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            # SafetensorError: a truncated or corrupt weights file (a failed copy, a Git LFS pointer).
            raise ModelLoadError(
                f"Cannot load model from '{location}': {error}. If its weights file is damaged, copy or "
                "export the checkpoint again."
            ) from error
    try:
        return auto_class.from_pretrained(location, local_files_only=True, **options)
    except OSError:
        if hub_offline():
            raise ModelLoadError(
                f"Model '{location}' is not in the local Hugging Face cache and the Hub is offline "
                "(HF_HUB_OFFLINE=1). Download it on a connected machine with save_pretrained and "
                "pass that directory instead, or use 'default'."
            ) from None
    try:
        return auto_class.from_pretrained(location, **options)
    except OSError as error:
        raise ModelLoadError(
            f"Cannot download model '{location}' from the Hugging Face Hub and it is not cached: {error}. "
            "If this machine is offline, save the model on a connected machine (save_pretrained) and "
            "pass that directory instead, or use 'default'."
        ) from error


def load_image_processor(name_or_path: str | os.PathLike, **kwargs):
    """The checkpoint's image processor, asking for a backend its model type really has.

    transformers prefers a torchvision processor and logs "Requested torchvision backend is not
    available. Falling back to pil backend." for model types that only have a PIL one (the timm
    wrapper behind the default model), which reads like a broken install. Naming the backend
    that exists keeps the log quiet without changing the processor.
    """
    from transformers import AutoConfig, AutoImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    model_type = load_pretrained(AutoConfig, name_or_path).model_type
    backends = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if backends and "torchvision" not in backends:
        kwargs.setdefault("backend", next(iter(backends)))
    return load_pretrained(AutoImageProcessor, name_or_path, **kwargs)

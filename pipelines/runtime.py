"""Which runtime runs a pipeline's network: ONNX Runtime on an exported graph, or PyTorch eager.

``runtime`` is one of ``RUNTIMES``:

- ``"auto"`` (the default): ONNX Runtime when the checkpoint directory holds ``model.onnx`` and
  onnxruntime imports, else PyTorch. The default model's cache build writes its ``model.onnx``;
  the checkpoints this project ships in ``models/`` (in git, never written to) get theirs
  exported once into the cache (``common.onnx_cache``). When that export fails, the reason is
  logged and the model is served by PyTorch.
- ``"torch"``: always PyTorch.
- ``"onnx"``: always ONNX Runtime; a checkpoint without ``model.onnx`` is refused with the
  command that makes one.

Only the forward pass changes: preprocessing, calibration, thresholds, tiling and stage 1 stay
the pipelines' own, and the eager model stays loaded for ``describe`` and Grad-CAM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint_files import ONNX_FILE
from common.checkpoints import ModelLoadError
from common.default_model import onnx_fallback_reason
from common.onnx_cache import cached_export
from common.onnx_network import OnnxExportError, OnnxNetwork, read_export_report

logger = logging.getLogger("vispect.runtime")

RUNTIMES = ("auto", "torch", "onnx")
# The --runtime help of the command lines and the app.
RUNTIME_HELP = (
    f"what runs the network: 'auto' (ONNX Runtime when the checkpoint has {ONNX_FILE}, else PyTorch; "
    f"the default), 'torch', or 'onnx' (refused without {ONNX_FILE})"
)
# The embedded demo models live beside the code, whatever the working directory.
PROJECT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@dataclass(frozen=True)
class ServedNetwork:
    """What runs a model's forward pass: ``runtime`` is ``"onnx"`` (with its graph) or ``"torch"``.

    ``export_report`` is the parity report saved beside ``model.onnx`` (a dict whose keys depend
    on who exported it), or None.
    """

    runtime: str = "torch"
    network: OnnxNetwork | None = None
    export_report: dict | None = None
    onnx_file: str | None = None


EAGER = ServedNetwork()


class ServedByRuntime:
    """What a pipeline whose forward pass ``self.served`` runs says about its runtime."""

    served: ServedNetwork

    @property
    def runtime(self) -> str:
        """``"onnx"`` (ONNX Runtime runs the forward pass) or ``"torch"``."""
        return self.served.runtime

    @property
    def network(self) -> OnnxNetwork | None:
        """The ``common.onnx_network.OnnxNetwork`` that runs the forward pass, or None for PyTorch."""
        return self.served.network

    @property
    def export_report(self) -> dict | None:
        """The parity report saved beside ``model.onnx`` when ONNX Runtime serves the model."""
        return self.served.export_report


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of ``RUNTIMES``.

    Raises:
        ValueError: naming the bad value and the ones that work.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(repr(r) for r in RUNTIMES)}, got {runtime!r}.")
    return runtime


def is_project_model(directory: str | os.PathLike) -> bool:
    """True for a checkpoint inside the project's ``models/`` folder (whose exports go to the cache)."""
    return Path(directory).resolve().is_relative_to(PROJECT_MODELS_DIR.resolve())


def export_command(directory: str | os.PathLike) -> str:
    return f"python -m train.export {directory} OUT --format onnx"


def serve_network(
    runtime: str,
    source: str,
    checkpoint_dir: str | None,
    model: torch.nn.Module,
    check_inputs: Callable[[], Sequence[torch.Tensor]],
    *,
    segmentation: bool = False,
) -> ServedNetwork:
    """Choose and load the runtime for a model loaded from ``source`` (see the module docstring).

    Args:
        runtime: One of ``RUNTIMES``.
        source: What the user named (for messages).
        checkpoint_dir: The local checkpoint directory, or None for a hub id.
        model: The eager model (exported when a project checkpoint has no cached export yet).
        check_inputs: ``pixel_values`` batches to check such an export on.
        segmentation: A segmenter: exported with dynamic height and width, checked on label maps.

    Raises:
        ValueError: ``runtime`` is not one of ``RUNTIMES``.
        common.checkpoints.ModelLoadError: ``"onnx"`` cannot be served (the message says why
            and how to fix it), or a ``model.onnx`` is there but ONNX Runtime cannot load it.
    """
    if check_runtime(runtime) == "torch":
        return EAGER
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    if folder is None:
        return _eager_instead(
            runtime, f"Model '{source}' is not a local directory, so it has no {ONNX_FILE} to serve with ONNX Runtime."
        )
    try:
        import onnxruntime  # noqa: F401  (only whether it imports)
    except ImportError:
        # Checked before exporting, so a missing package is not recorded as a failed export.
        return _eager_instead(
            runtime, f"onnxruntime is not installed, so no {ONNX_FILE} can be served: pip install -r requirements.txt."
        )
    if not (folder / ONNX_FILE).is_file() and is_project_model(folder):
        try:
            folder = cached_export(folder, model, check_inputs, segmentation=segmentation, dynamic_size=segmentation)
        except OnnxExportError as error:
            return _eager_instead(runtime, f"The ONNX export of '{source}' failed: {error}.", warn=True)
    onnx_file = folder / ONNX_FILE
    if not onnx_file.is_file():
        reason = onnx_fallback_reason(folder)
        why = f" (its export failed: {reason})" if reason else ""
        return _eager_instead(
            runtime,
            f"Model '{source}' has no {ONNX_FILE} in {folder}{why}. Export one with "
            f"`{export_command(folder)}` and load OUT, or use runtime 'auto' or 'torch'.",
        )
    try:
        network = OnnxNetwork(onnx_file)
    except OnnxExportError as error:
        raise ModelLoadError(
            f"{error}. Export it again (`{export_command(checkpoint_dir)}`) or serve the model with runtime 'torch'."
        ) from error
    return ServedNetwork("onnx", network, read_export_report(folder), str(onnx_file))


def _eager_instead(runtime: str, reason: str, warn: bool = False) -> ServedNetwork:
    """PyTorch for ``"auto"`` (logging why when it is a failure); a refusal for ``"onnx"``."""
    if runtime == "onnx":
        raise ModelLoadError(reason)
    if warn:
        logger.warning("%s Serving it with PyTorch instead.", reason)
    return EAGER


def check_graph_input(network: OnnxNetwork, source: str, input_size: tuple[int, int]) -> None:
    """Refuse a fixed-size graph that cannot take the ``input_size`` images the processor makes.

    Raises:
        common.checkpoints.ModelLoadError: naming both sizes and the fix.
    """
    if not network.accepts((1, 3, *input_size)):
        raise ModelLoadError(
            f"The ONNX graph of '{source}' ({network.path}) takes {network.describe_input()}, but its "
            f"preprocessing makes {input_size[0]}x{input_size[1]} images. Export it again at that size, "
            "or serve the model with runtime 'torch'."
        )

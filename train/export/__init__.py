"""Export a trained checkpoint for shipping: ``python -m train.export SRC OUT [--format onnx]``.

Two formats, both a checkpoint directory the pipelines load like any other:

- ``--format safetensors`` (the default, ``fp16.py``): the weights cast to float16.
- ``--format onnx`` (``onnx_export.py``): the eager weights kept, plus ``model.onnx`` (float32,
  or int8 with ``--quantize``, ``quantize.py``) and ``export_report.json``, the parity report
  (``parity.py``) that checked it against eager on held-out images. An export below its
  agreement floor is refused and nothing is written.

What is copied and how it is written atomically is ``checkpoint_copy.py``; how a checkpoint is
loaded and traced, ``network.py``; which images calibrate and check it, ``images.py``
(``sample_sets.py`` writes offline ones for the default model); ``cli.py`` is the argument parser.
"""

from train.export.checkpoint_copy import ExportError, ParityError
from train.export.cli import main
from train.export.fp16 import export

__all__ = ["ExportError", "ParityError", "export", "main"]

"""What a stage-1 multi-label classifier says is present, image by image, at its own thresholds.

``train.segmentation.tune_min_area --stage1`` needs it to fit the minimum areas of the two-stage pipeline
on validation. It reads the checkpoint the way ``pipelines/`` serves it: the same
preprocessing (``common.preprocessing``), a sigmoid per class, and the per-class thresholds
of its ``calibration.json``, matched and applied by ``common.segmentation_rules`` as the
pipeline does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from common.calibration import CalibrationRecord
from common.checkpoints import load_image_processor, load_pretrained
from common.image_io import load_image
from common.preprocessing import batch_preprocessor
from common.segmentation_rules import Stage1MismatchError, ruled_out, stage1_columns
from train.data import DataError

BATCH = 8


class Stage1:
    """A stage-1 checkpoint, checked against the segmenter's defect labels when loaded."""

    def __init__(self, stage1_dir: str | os.PathLike, defect_labels: Sequence[str]):
        """Load ``stage1_dir``, a multi-label classifier whose labels are ``defect_labels``.

        Raises:
            DataError: the checkpoint is not multi-label or its labels are not ``defect_labels``.
            common.checkpoints.ModelLoadError: it cannot be loaded.
        """
        self.model = load_pretrained(AutoModelForImageClassification, str(stage1_dir), dtype=torch.float32).eval()
        config = self.model.config
        labels = [config.id2label[i] for i in range(len(config.id2label))]
        try:
            self.columns, self.thresholds = stage1_columns(
                config.problem_type,
                labels,
                defect_labels,
                CalibrationRecord.load_or_uncalibrated(stage1_dir).thresholds,
                stage1_name=str(stage1_dir),
                segmenter_name="the segmenter",
            )
        except Stage1MismatchError as error:
            raise DataError(str(error)) from error
        self.preprocess = batch_preprocessor(load_image_processor(str(stage1_dir)))

    def presence(self, images: Iterable[object]) -> np.ndarray:
        """``(images, defect classes)`` booleans: is each defect type present, by stage 1.

        Args:
            images: Anything ``load_image`` reads (paths, bytes, PIL images).
        """
        sources = list(images)
        probabilities = [np.zeros((0, len(self.model.config.id2label)), dtype=np.float32)]
        for start in range(0, len(sources), BATCH):
            batch = [load_image(source) for source in sources[start : start + BATCH]]
            with torch.inference_mode():
                probabilities.append(torch.sigmoid(self.model(pixel_values=self.preprocess(batch)).logits).numpy())
        return ~ruled_out(np.concatenate(probabilities)[:, self.columns], self.thresholds)

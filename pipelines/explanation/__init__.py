"""Grad-CAM explanations for any classifier or defect segmenter ``pipelines/`` can load, through ``pytorch-grad-cam``.

A CAM needs three small inputs (pytorch-grad-cam ``base_cam.py``): the layer whose activations
it reads, the class to explain, and a reshape transform that turns the layer's output into a
``(B, C, H, W)`` map. The package is split the way pytorch-grad-cam splits its code:

* ``layers``: the table from ``config.model_type`` (or the timm class) to target layer and
  output layout, the layers a user may pick instead, and the reshape transform;
* ``cam``: ``METHODS`` and running one on a frozen, hook-private view of the model;
* ``guided``: pixel detail (Guided Grad-CAM) for ReLU networks;
* ``placement``: where a classifier's input came from in the original image, and back;
* ``metrics``: the deletion test every explanation gets, and the localisation measures
  (heatmap against a true mask) the benchmarks use;
* ``render``: the overlay and the three-panel view;
* ``classifier`` and ``defect``: the two pipelines, ``explain_prediction`` and
  ``explain_defect``, with their argument checks;
* ``results``: ``Explanation``, ``Faithfulness`` and ``ExplanationError``.

Everything public is imported here; names with a leading underscore are shared between the
modules of the package only.

>>> from pipelines.classification import ImageClassifier
>>> from pipelines.explanation import explain_prediction
>>> classifier = ImageClassifier.from_pretrained("default")
>>> explanation = explain_prediction(classifier, "cat.jpg")  # doctest: +SKIP
>>> explanation.target_label, explanation.heatmap.shape  # doctest: +SKIP
('tiger cat', (300, 451))
"""

from pipelines.explanation.cam import METHODS
from pipelines.explanation.classifier import explain_prediction
from pipelines.explanation.defect import explain_defect
from pipelines.explanation.guided import check_guided
from pipelines.explanation.layers import candidate_layers, check_layer, find_target_layer
from pipelines.explanation.metrics import (
    NEAR_FRACTION,
    defect_deletion_test,
    deletion_test,
    energy_near_object,
    energy_share,
    faithfulness_sentence,
    grown_mask,
    pointing_hit,
    resolution_ceiling,
)
from pipelines.explanation.placement import Placement, input_placement, map_to_original
from pipelines.explanation.results import Explanation, ExplanationError, Faithfulness

__all__ = [
    "METHODS",
    "NEAR_FRACTION",
    "Explanation",
    "ExplanationError",
    "Faithfulness",
    "Placement",
    "candidate_layers",
    "check_guided",
    "check_layer",
    "defect_deletion_test",
    "deletion_test",
    "energy_near_object",
    "energy_share",
    "explain_defect",
    "explain_prediction",
    "faithfulness_sentence",
    "find_target_layer",
    "grown_mask",
    "input_placement",
    "map_to_original",
    "pointing_hit",
    "resolution_ceiling",
]

"""Defect explanations: does Grad-CAM for a defect class light up that defect?

    python -m bench.defect_explanation [--model models/steel-segformer] [--n 40] [--seed 1]
                                       [--method gradcam] [--layer NAME]

For every (image, defect class) pair of a freshly generated steel set where the truth has the
class, ``explain_defect`` explains that class over the region the segmenter paints for it,
and the heatmap is scored against the true mask of the class: the share of its energy on
the defect (chance: the defect's share of the image) and the pointing game. Pairs where the
model paints nothing for the class have no region to explain; they are counted, not scored.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import RESULTS, machine_info, publish_report
from common.checkpoint_files import CONFIG_FILE
from datagen.steel import SteelImage, held_out_steel
from pipelines.explanation import energy_share, pointing_hit
from pipelines.registry import PROJECT_MODELS_DIR

DEFAULT_OUT = RESULTS / "defect_explanation.json"


def measure(model_dir: Path, data: list[SteelImage], method: str, layer: str | None) -> dict:
    """Score the defect explanations of the segmenter in ``model_dir`` on every image of ``data``."""
    from common.image_io import load_image
    from pipelines.explanation import ExplanationError, candidate_layers, explain_defect
    from pipelines.segmentation import DefectSegmenter

    segmenter = DefectSegmenter.from_pretrained(model_dir)
    # Checked once here, so that inside the loop an ExplanationError can only mean "not painted".
    if layer is not None and layer not in candidate_layers(segmenter.model):
        last = ", ".join(candidate_layers(segmenter.model)[-5:])
        raise ValueError(f"--layer {layer!r} is not a layer of {model_dir}; the deepest valid ones: {last}")
    records, unexplained, layer_name = [], 0, None
    for example in data:
        truth = example.mask
        image = None
        for class_id in np.unique(truth[(truth > 0) & (truth != 255)]):
            if image is None:
                image = load_image(example.path)
            try:
                explanation = explain_defect(
                    segmenter, image, class_id=int(class_id), method=method, layer=layer, faithfulness=False
                )
            except ExplanationError:
                unexplained += 1  # the model paints nothing of this class here
                continue
            mask = truth == class_id
            layer_name = explanation.layer_name
            records.append({
                "image": example.image_id,
                "class": segmenter.id2label[int(class_id)],
                "energy_share": round(energy_share(explanation.heatmap, mask), 4),
                "mask_area_share": round(float(mask.mean()), 4),
                "pointing_hit": pointing_hit(explanation.heatmap, mask),
            })  # fmt: skip
    return {
        "model": str(model_dir),
        "method": method,
        "layer": layer_name,
        "explained_pairs": len(records),
        "pairs_without_a_predicted_region": unexplained,
        "overall": _summary(records),
        "per_class": {
            name: _summary([r for r in records if r["class"] == name]) for name in sorted({r["class"] for r in records})
        },
        "records": records,
    }


def _summary(records: list[dict]) -> dict:
    if not records:
        return {"n": 0}
    share = np.array([r["energy_share"] for r in records])
    chance = np.array([r["mask_area_share"] for r in records])
    return {
        "n": len(records),
        "energy_share_mean": round(float(share.mean()), 4),
        "energy_share_median": round(float(np.median(share)), 4),
        "chance_mean": round(float(chance.mean()), 4),
        "pointing_game_hit_rate": round(float(np.mean([r["pointing_hit"] for r in records])), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.explanation import METHODS

    parser = argparse.ArgumentParser(prog="python -m bench.defect_explanation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PROJECT_MODELS_DIR / "steel-segformer")
    parser.add_argument("--n", type=int, default=40, help="steel images to generate (those with defects are used)")
    parser.add_argument("--seed", type=int, default=1, help="held-out seed (the demo models trained on seed 0)")
    parser.add_argument("--method", default="gradcam", choices=list(METHODS))
    parser.add_argument("--layer", default=None, help="CAM layer (default: the pipeline's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if not (args.model / CONFIG_FILE).is_file():
        report = {"benchmark": "defect_explanation", "skipped": f"no checkpoint at --model {args.model}"}
        publish_report(report, args.out, report["skipped"])
        return 0
    try:
        data = held_out_steel(RESULTS / "data", args.n, args.seed)
        measured = measure(args.model, data, args.method, args.layer)
    except ValueError as error:
        parser.error(str(error))
    report = {"benchmark": "defect_explanation", "held_out": {"n": args.n, "seed": args.seed}, **measured}
    report["machine"] = machine_info()
    overall = report["overall"]
    summary = (
        f"{report['explained_pairs']} defects explained ({report['pairs_without_a_predicted_region']} not painted): "
        f"energy on the defect {overall.get('energy_share_mean', float('nan')):.3f} "
        f"(chance {overall.get('chance_mean', float('nan')):.3f}), "
        f"pointing game {overall.get('pointing_game_hit_rate', float('nan')):.2f}"
    )
    publish_report(report, args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

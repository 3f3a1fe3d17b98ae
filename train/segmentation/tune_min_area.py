"""Fit a trained segmenter's per-class minimum areas on its validation split, into its config.

    python -m train.segmentation.tune_min_area build/runs/steel-segformer --data_dir data/steel --seed 0

``train.segmentation.train`` does this at the end of every run; this command does it for a
checkpoint trained before, or on other validation data. Give the same ``--seed`` and
``--validation_fraction`` as the training run so that the images are the held-out ones.
``pipelines.segmentation`` clears a class whose mask is smaller than its minimum.

With ``--stage1 DIR`` a second set is fitted for the two-stage pipeline (``min_area_two_stage``):
on the maps after the classes that stage 1 rules out are cleared. Stage 1 already removes
most false alarms on clean images, so these minimums come out smaller, and the pipeline uses
them whenever it runs with a stage-1 classifier.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSemanticSegmentation

from common.checkpoint_files import CONFIG_FILE, MIN_AREA_TWO_STAGE_KEY, MODEL_CARD_FILE
from common.checkpoints import ModelLoadError, load_image_processor, load_pretrained
from common.segmentation_rules import all_stored_min_areas
from train import report
from train.data import DataError
from train.segmentation import data as seg
from train.segmentation import train as train_seg
from train.segmentation.postprocessing import clear_ruled_out, describe_min_areas, record_min_areas
from train.segmentation.stage1 import Stage1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.segmentation.tune_min_area", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", help="segmentation checkpoint directory (its config.json is updated)")
    parser.add_argument("--data_dir", help="Kaggle layout, as given to training")
    parser.add_argument("--mask_dir", help="images/ + masks/ folders, as given to training")
    parser.add_argument("--validation_fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42, help="the training run's --seed")
    parser.add_argument("--resize_to", help="as given to training, if it was")
    parser.add_argument("--stage1", help="stage-1 classifier: also fit the two-stage pipeline's minimum areas")
    args = parser.parse_args(argv)
    model_dir = Path(args.model)
    try:
        data_args = train_seg.DataArguments(
            data_dir=args.data_dir,
            mask_dir=args.mask_dir,
            validation_fraction=args.validation_fraction,
            resize_to=args.resize_to,
        )
        data = train_seg.load_data(data_args, args.seed)
        model = load_pretrained(AutoModelForSemanticSegmentation, str(model_dir), dtype=torch.float32)
        processor = load_image_processor(str(model_dir))
    except (DataError, ModelLoadError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    if {int(k): v for k, v in model.config.id2label.items()} != data.id2label:
        parser.exit(2, f"error: the model's classes {model.config.id2label} are not the data's {data.id2label}.\n")
    try:  # before the long pass over the validation images
        stage1 = Stage1(args.stage1, [data.id2label[c] for c in sorted(data.id2label) if c]) if args.stage1 else None
    except (DataError, ModelLoadError) as error:
        parser.exit(2, f"error: {error}\n")
    _, evaluate = train_seg.joint_transforms(processor, data_args.crop, data_args.resize)
    data.splits["validation"].set_transform(evaluate)
    predicted, truth = train_seg.validation_label_maps(model, data.splits["validation"])
    tuned = record_min_areas(model, predicted, truth, data.id2label)
    description = describe_min_areas(tuned)
    if stage1 is not None:
        images = [seg.image_source(example) for example in data.splits["validation"].with_format(None)]
        cleared = clear_ruled_out(predicted, stage1.presence(images))
        tuned = {"segmenter_alone": tuned, "two_stage": record_min_areas(
            model, cleared, truth, data.id2label, with_stage1=True)}  # fmt: skip
        description = describe_min_areas(tuned["segmenter_alone"], tuned["two_stage"], args.stage1)
    elif two_stage := all_stored_min_areas(model.config).get(MIN_AREA_TWO_STAGE_KEY):
        description += (
            f"\n\n`{MIN_AREA_TWO_STAGE_KEY}` (used with a stage-1 classifier) is kept from an earlier fit: "
            f"{two_stage}. Pass --stage1 to refit it."
        )
    config_path = model_dir / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config.update(all_stored_min_areas(model.config))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    command = " ".join(["python -m train.segmentation.tune_min_area", *(sys.argv[1:] if argv is None else argv)])
    report.set_card_section(
        model_dir / MODEL_CARD_FILE, "Post-processing", description + f"\n\nFitted with:\n\n```bash\n{command}\n```"
    )
    print(json.dumps(tuned, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

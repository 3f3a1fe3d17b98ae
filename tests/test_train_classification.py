"""train/classification/train.py end to end on generated data and tiny models."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.classification import ImageClassifier
from tests.conftest import COLOURS, write_colour_folders
from train.classification import train
from train.data import DataError

ROOT = Path(__file__).resolve().parents[1]
REPORT_FILES = [
    "model.safetensors",
    "config.json",
    "eval_results.json",
    "test_results.json",
    "per_class.csv",
    "confusion_matrix.png",
    "training_curves.png",
    "misclassified.png",
    "reliability.png",
    "calibration.json",
    "skipped_images.csv",
    "README.md",
]


def _args(model, data, out, *extra):
    return [
        "--model_name_or_path", str(model),
        "--train_dir", str(data / "train"),
        "--validation_dir", str(data / "validation"),
        "--test_dir", str(data / "test"),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "8",
        "--disable_tqdm", "true",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("model_fixture", ["tiny_vit_dir", "tiny_timm_dir"])
def test_smoke_training_writes_a_checkpoint_the_app_can_serve(model_fixture, request, colour_folders, tmp_path):
    out = tmp_path / "out"
    metrics = train.main(
        _args(request.getfixturevalue(model_fixture), colour_folders, out, "--max_steps", "2",
              "--other_dir", str(colour_folders / "other"))
    )  # fmt: skip
    missing = [name for name in REPORT_FILES if not (out / name).is_file()]
    assert not missing, f"missing report files: {missing}"
    assert "test_accuracy" in json.loads((out / "test_results.json").read_text())
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by a container's app user
    assert "eval_temperature" in metrics and "eval_open_set_known_accepted" in metrics
    classifier = ImageClassifier.from_pretrained(out)
    assert sorted(classifier.id2label.values()) == sorted(COLOURS)
    assert classifier.trust.rejection_method == "max_softmax"
    result = classifier.classify(next((colour_folders / "test" / "red").iterdir()), top_k=3)
    assert {p.label for p in result.predictions} == set(COLOURS)
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert sorted(row["label"] for row in rows) == sorted(COLOURS)


def test_a_short_run_learns_and_keeps_the_best_epoch(tiny_vit_dir, colour_folders, tmp_path):
    out = tmp_path / "out"
    train.main(_args(tiny_vit_dir, colour_folders, out, "--num_train_epochs", "4", "--learning_rate", "3e-3"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] > 0.6  # three classes: chance is 1/3
    # The saved weights are exactly the best checkpoint's (transformers 5.23's own reload
    # skips renamed ViT tensors; see ImageClassificationTrainer._load_weights).
    from transformers import ViTForImageClassification

    best = ViTForImageClassification.from_pretrained(state["best_model_checkpoint"]).state_dict()
    final = ViTForImageClassification.from_pretrained(out).state_dict()
    assert all(torch.equal(best[name], final[name]) for name in best)
    eval_accuracy = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    assert eval_accuracy == pytest.approx(state["best_metric"])


def test_multi_label_csv_tunes_thresholds(tiny_vit_dir, colour_folders, tmp_path):
    rows = []
    for path in sorted((colour_folders / "train").rglob("*.png")):
        colour = path.parent.name
        rows.append((path.relative_to(colour_folders), colour + (";warm" if colour == "red" else "")))
    csv_path = colour_folders / "labels.csv"
    with csv_path.open("w", newline="") as out:
        csv.writer(out).writerows([("path", "label"), *rows])
    out = tmp_path / "out"
    train.main([
        "--model_name_or_path", str(tiny_vit_dir), "--train_csv", str(csv_path), "--problem_type", "multi_label",
        "--output_dir", str(out), "--max_steps", "2", "--disable_tqdm", "true",
    ])  # fmt: skip
    record = json.loads((out / "calibration.json").read_text())
    assert len(record["multi_label_thresholds"]) == 4  # blue, green, red, warm
    classifier = ImageClassifier.from_pretrained(out)
    assert classifier.multi_label and sorted(classifier.id2label.values()) == ["blue", "green", "red", "warm"]
    assert "average_precision" in next(csv.DictReader((out / "per_class.csv").open()))


def test_imbalance_options_and_mixup_train(tiny_vit_dir, colour_folders, tmp_path):
    out = tmp_path / "out"
    train.main(_args(tiny_vit_dir, colour_folders, out, "--max_steps", "3", "--class_weights", "auto",
                     "--weighted_sampler", "true", "--mixup_alpha", "0.4", "--cutmix_alpha", "1.0"))  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert np.isfinite([entry["train_loss"] for entry in history if "train_loss" in entry]).all()


def test_inverse_frequency_weights_balance_the_classes():
    weights = train.inverse_frequency_weights([90, 10])
    assert (weights * torch.tensor([90.0, 10.0])).tolist() == pytest.approx([50.0, 50.0])


def test_soft_labels_give_the_soft_cross_entropy():
    logits = torch.tensor([[2.0, 0.0]])
    soft = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * torch.log_softmax(logits, -1)).sum()
    assert train.ClassificationLoss()({"logits": logits}, soft).item() == pytest.approx(expected.item())


# ---- refusals: each names the problem and the fix ------------------------------------


def _small_folders(root, classes):
    for name, files in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i, content in enumerate(files):
            if content == "good":
                from PIL import Image

                Image.new("RGB", (16, 16), (i * 20, 50, 90)).save(folder / f"{i}.png")
            else:
                (folder / f"{i}.png").write_bytes(b"not an image")
    return root


def test_refuses_a_single_class(tiny_vit_dir, tmp_path):
    data = _small_folders(tmp_path / "data", {"gear": ["good"] * 4})
    with pytest.raises(DataError, match="only one class"):
        train.main(
            ["--model_name_or_path", str(tiny_vit_dir), "--train_dir", str(data), "--output_dir", str(tmp_path / "o")]
        )


def test_refuses_too_many_unreadable_images(tiny_vit_dir, tmp_path):
    data = _small_folders(tmp_path / "data", {"gear": ["good"] * 3 + ["bad"] * 2, "nut": ["good"] * 5})
    with pytest.raises(DataError, match=r"2 of 10 train images cannot be read.*--max_bad_fraction"):
        train.main(
            ["--model_name_or_path", str(tiny_vit_dir), "--train_dir", str(data), "--output_dir", str(tmp_path / "o")]
        )


def test_refuses_a_class_with_no_readable_image(tiny_vit_dir, tmp_path):
    data = _small_folders(tmp_path / "data", {"gear": ["bad"] * 2, "nut": ["good"] * 5})
    with pytest.raises(DataError, match="Class 'gear' has no readable training images"):
        train.main(["--model_name_or_path", str(tiny_vit_dir), "--train_dir", str(data),
                    "--output_dir", str(tmp_path / "o"), "--max_bad_fraction", "0.5"])  # fmt: skip


def test_refuses_a_missing_column(tiny_vit_dir, tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,category\na.png,gear\n")
    with pytest.raises(DataError, match="no column 'path'.*--image_column_name"):
        train.main(["--model_name_or_path", str(tiny_vit_dir), "--train_csv", str(csv_path),
                    "--output_dir", str(tmp_path / "o")])  # fmt: skip


def test_refuses_to_overwrite_a_finished_model(tiny_vit_dir, colour_folders, tmp_path):
    out = shutil.copytree(tiny_vit_dir, tmp_path / "finished")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(DataError, match="already holds a trained model.*--overwrite_output_dir"):
        train.main(_args(tiny_vit_dir, colour_folders, out, "--max_steps", "1"))
    assert (out / "model.safetensors").read_bytes() == before


def test_refuses_ambiguous_or_missing_sources(tiny_vit_dir, tmp_path):
    with pytest.raises(ValueError, match="exactly one training source"):
        train.parse_args(["--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--problem_type"):
        train.parse_args(["--train_dir", str(tmp_path), "--output_dir", str(tmp_path), "--problem_type", "many"])


def test_refuses_a_missing_train_dir(tiny_vit_dir, tmp_path):
    with pytest.raises(DataError, match="--train_dir .* is not a directory"):
        train.main(["--model_name_or_path", str(tiny_vit_dir), "--train_dir", str(tmp_path / "nope"),
                    "--output_dir", str(tmp_path / "o")])  # fmt: skip


def test_command_line_errors_are_one_line(tiny_vit_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train.classification.train", "--model_name_or_path", str(tiny_vit_dir),
         "--train_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --train_dir")
    assert "Traceback" not in result.stderr


# ---- long-running behaviour: resume after a kill, two processes ----------------------

_SLOW_STEPS = """
import sys, time
from transformers import TrainerCallback
from train.classification import train

class Slow(TrainerCallback):  # makes the kill land mid-training, whatever the machine speed
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(1.0)

original = train.ImageClassificationTrainer.__init__
def patched(self, *a, **k):
    original(self, *a, **k)
    self.add_callback(Slow())
train.ImageClassificationTrainer.__init__ = patched
train.main(sys.argv[1:])
"""


def _run(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "train.classification.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)  # fmt: skip


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_model(tiny_vit_dir, tmp_path):
    data = write_colour_folders(tmp_path / "data", {"train": 16, "validation": 4})
    schedule = ["--max_steps", "8", "--eval_strategy", "steps", "--eval_steps", "4", "--dataloader_num_workers", "0"]
    reference = tmp_path / "reference"
    assert _run(_args_no_test(tiny_vit_dir, data, reference, *schedule)).returncode == 0

    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _SLOW_STEPS, *_args_no_test(tiny_vit_dir, data, resumed, *schedule)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (resumed / "checkpoint-4" / "trainer_state.json").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.kill()
        process.wait()
    assert not (resumed / "model.safetensors").exists(), "the kill came too late to test resuming"

    result = _run(_args_no_test(tiny_vit_dir, data, resumed, *schedule))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming from" in result.stderr
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # The first half's log came back from the checkpoint, so the curves cover the whole run.
    assert [entry["step"] for entry in state["log_history"] if "eval_loss" in entry][:2] == [4, 8]
    # Augmentation randomness is not replayed bit for bit after a resume, so compare quality.
    expected = json.loads((reference / "eval_results.json").read_text())
    actual = json.loads((resumed / "eval_results.json").read_text())
    assert actual["eval_accuracy"] == expected["eval_accuracy"]
    assert actual["eval_loss"] == pytest.approx(expected["eval_loss"], rel=0.01)


def _args_no_test(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--train_dir", str(data / "train"),
            "--validation_dir", str(data / "validation"), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--seed", "0", *extra]  # fmt: skip


@pytest.mark.slow
def test_two_process_ddp_training_saves_a_model(tiny_vit_dir, colour_folders, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "-m", "train.classification.train",
         *_args(tiny_vit_dir, colour_folders, out, "--max_steps", "3", "--per_device_train_batch_size", "4")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    # Each of the 2 processes sees 18 of the 36 images: 5 batches of 4 per epoch, so 3 steps
    # are 3/5 of an epoch (one process alone would need 9 batches: 1/3).
    assert state["epoch"] == pytest.approx(3 / 5)
    assert ImageClassifier.from_pretrained(out).id2label[0] in COLOURS


def test_image_size_resizes_whole_images_and_is_saved(tiny_timm_dir, colour_folders, tmp_path):
    out = tmp_path / "wide"
    train.main(_args(tiny_timm_dir, colour_folders, out, "--max_steps", "1", "--image_size", "32x96"))
    info = ImageClassifier.from_pretrained(out).describe()
    assert info.input_size == (32, 96)
    with pytest.raises(ValueError, match="--image_size must look like"):
        train.parse_args(["--train_dir", str(tmp_path), "--output_dir", str(tmp_path), "--image_size", "wide"])


def test_perfect_validation_does_not_make_every_answer_certain():
    from common.calibration import softmax
    from train.classification.report import fit_temperature_without_overreach

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 20)
    logits = rng.normal(0, 0.3, (20, 3))
    logits[np.arange(20), labels] += 1.5  # all right, but unsure
    assert (logits.argmax(-1) == labels).all()
    temperature = fit_temperature_without_overreach(logits, labels)
    confidence = softmax(logits, temperature).max(-1).mean()
    assert confidence == pytest.approx(21 / 22, abs=1e-3)  # sharpened only up to the rule of succession
    logits[0] = np.roll(logits[0], 1)  # one error: plain temperature scaling applies
    from train.classification.calibration import fit_temperature

    assert fit_temperature_without_overreach(logits, labels) == fit_temperature(logits, labels)


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    """A process killed while saving leaves checkpoint-N without trainer_state.json: resume from the one before."""
    from transformers import TrainingArguments

    from train.arguments import check_output_dir

    for step, complete in ((2, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert check_output_dir(args, overwrite=False) == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    assert check_output_dir(args, overwrite=False) is None  # nothing complete: start fresh

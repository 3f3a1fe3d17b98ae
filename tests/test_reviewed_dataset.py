"""Reviewed decisions of the inspection log -> an imagefolder -> the training CLI takes it as it is."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from common.checkpoint_files import CONFIG_FILE
from common.image_store import image_sha256
from common.inspection_log import Decision, InspectionLog
from tests.conftest import COLOURS
from train import datasets
from train.reviewed import ReviewedDatasetError, export_reviewed, folder_name, split_per_class


def colour_png(colour: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 35, (40, 40, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def log_decision(log: InspectionLog, image: bytes, answer: str, flags=("low_confidence",)) -> int:
    """A flagged classification of ``image``; with the "unknown" flag, an open-set rejection."""
    decision = Decision(
        task="classify",
        channel="classify",
        image_sha256=image_sha256(image),
        model_source="models/colours",
        answer=answer,
        confidence=0.4,
        scores={answer: 0.4},
        flags=flags,
        unknown="unknown" in flags,
    )
    return log.record(decision, image)


def fill_log(log: InspectionLog, per_class: int = 5) -> dict[str, str]:
    """Reviewed colour images: half accepted, half corrected from a wrong answer; sha -> true colour."""
    truth = {}
    for colour in ("red", "green", "blue"):
        for index in range(per_class):
            image = colour_png(colour, seed=100 * list(COLOURS).index(colour) + index)
            truth[image_sha256(image)] = colour
            if index % 2:
                log.review(log_decision(log, image, colour), None, "Ann", accepted=True)
            else:
                log.review(log_decision(log, image, "red" if colour != "red" else "green"), colour, "Ann", False)
    return truth


def test_reviews_become_an_imagefolder(open_log, tmp_path):
    log = open_log(store_images=True)
    truth = fill_log(log)
    log_decision(log, colour_png("red", 999), "red")  # flagged but not reviewed: left out
    log.review(log_decision(log, colour_png("blue", 998), "gear", ("unknown",)), None, "Ann", True)  # no class

    out = tmp_path / "reviewed"
    info = export_reviewed(log, out, validation_fraction=0.4, seed=0)
    assert info["classes"] == ["blue", "green", "red"]
    assert info["counts"] == {
        "train": {"blue": 3, "green": 3, "red": 3},
        "validation": {"blue": 2, "green": 2, "red": 2},
    }
    assert info["left_out"] == {"no_class": 1, "not_stored": 0, "repeated_image": 0}
    assert json.loads((out / "dataset_info.json").read_text()) == info
    written = {path.stem: path.parent.name for path in out.glob("*/*/*.png")}
    assert written == truth  # every image under the label its review gave it

    # The same seed gives the same split.
    again = export_reviewed(log, tmp_path / "again", validation_fraction=0.4, seed=0)
    assert sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").glob("*/*/*.png")) == sorted(
        p.relative_to(out) for p in out.glob("*/*/*.png")
    )
    assert again["counts"] == info["counts"]


def test_an_image_decided_twice_is_written_once_with_its_latest_review(open_log, tmp_path):
    log = open_log(store_images=True)
    fill_log(log, per_class=2)
    image = colour_png("red", 50)  # not one of fill_log's
    log.review(log_decision(log, image, "red"), "green", "Ann", accepted=False)
    log.review(log_decision(log, image, "red"), None, "Bob", accepted=True)  # later: red after all
    info = export_reviewed(log, tmp_path / "out", validation_fraction=0)
    assert info["left_out"]["repeated_image"] == 1
    assert list((tmp_path / "out").glob(f"*/*/{image_sha256(image)}.png"))[0].parent.name == "red"
    assert list(info["counts"]) == ["train"]


def test_refusals_say_what_to_do(open_log, tmp_path):
    log = open_log(store_images=True)
    with pytest.raises(ReviewedDatasetError, match="no reviewed classify decisions.*History tab"):
        export_reviewed(log, tmp_path / "out")
    for seed in range(3):
        log.review(log_decision(log, colour_png("red", seed), "red"), None, "Ann", accepted=True)
    with pytest.raises(ReviewedDatasetError, match="one class \\('red'\\).*at least two"):
        export_reviewed(log, tmp_path / "out")
    with pytest.raises(ReviewedDatasetError, match="no reviewed classify decisions of model 'models/none'"):
        export_reviewed(log, tmp_path / "out", model="models/none")
    with pytest.raises(ReviewedDatasetError, match="below 1"):
        export_reviewed(log, tmp_path / "out", validation_fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_images_that_were_not_stored_are_refused_with_the_flag_that_keeps_them(open_log, tmp_path):
    log = open_log()  # store_images off, as by default
    for colour in ("red", "blue"):
        log.review(log_decision(log, colour_png(colour, 5), colour), None, "Ann", accepted=True)
    with pytest.raises(ReviewedDatasetError, match="2 reviewed classify decisions.*2 not stored.*--store-images"):
        export_reviewed(log, tmp_path / "out")


def test_the_split_keeps_a_training_image_per_class():
    from train.reviewed import ReviewedImage

    images = [ReviewedImage(f"{index:064x}", None, "a" if index < 2 else "b", None) for index in range(7)]
    split = split_per_class(images, 0.9, seed=3)
    for label in "ab":
        members = [split[image.sha256] for image in images if image.label == label]
        assert "train" in members and "validation" in members


def test_labels_become_safe_folder_names():
    assert folder_name("crane, bird") == "crane, bird"
    assert folder_name("a/b") == "a_b" and folder_name("..") == "_.."


def test_the_cli_writes_what_the_training_cli_takes(tmp_path, tiny_vit_dir, capsys):
    from train.classification import train

    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = InspectionLog.open(url, store_dir=tmp_path / "store", store_images=True)
    fill_log(log, per_class=4)
    log.close()
    out = tmp_path / "reviewed"
    argv = ["reviewed", "--log-db", url, "--store", str(tmp_path / "store"), "--out", str(out), "--seed", "1"]
    assert datasets.main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote the reviewed images of sqlite:///" in printed and "blue" in printed

    run = tmp_path / "run"
    train.main([
        "--model_name_or_path", str(tiny_vit_dir), "--train_dir", str(out / "train"),
        "--validation_dir", str(out / "validation"), "--output_dir", str(run), "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--report_to", "none",
    ])  # fmt: skip
    config = json.loads((run / CONFIG_FILE).read_text())
    assert sorted(config["id2label"].values()) == ["blue", "green", "red"]

    with pytest.raises(SystemExit):  # a non-empty --out is refused, as for the generated sets
        datasets.main(argv)
    assert "is not empty" in capsys.readouterr().err

"""The data check of the Train tab: layouts, flags, counts and refusals in the CLIs' own words."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from common.archives import extract_zip
from common.data_check import check_training_data, class_problems, unreadable_problem
from datagen.steel import write_steel
from tests.conftest import noise_png_bytes, write_zip
from train.classification import data as classification_data
from train.data import DataError

_seed = iter(range(10_000))


def write_images(root, folders: dict[str, int], size=(24, 24)) -> None:
    """``{"train/gear": 3, ...}`` -> that many distinct noise PNGs in each folder."""
    for folder, count in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (root / folder / f"{index:03d}.png").write_bytes(noise_png_bytes(next(_seed), size))


def split_folders(root, per_class: int = 6):
    write_images(
        root,
        {
            f"{split}/{name}": per_class if split == "train" else 2
            for split in ("train", "validation", "test")
            for name in ("gear", "nut")
        },
    )
    return root


def test_split_folders_map_to_the_cli_flags_with_other_dir(tmp_path):
    split_folders(tmp_path)
    write_images(tmp_path, {"other/calibration": 2, "other/holdout": 2})

    check = check_training_data(tmp_path)

    assert check.can_train, check.refusals
    assert check.layout == "train/validation/test folders of classes"
    assert check.counts["train"] == {"gear": 6, "nut": 6}
    assert check.counts["test"] == {"gear": 2, "nut": 2}
    assert check.counts["other"] == {"other": 4}
    assert check.data_flags == [
        "--train_dir",
        str(tmp_path / "train"),
        "--validation_dir",
        str(tmp_path / "validation"),
        "--test_dir",
        str(tmp_path / "test"),
        "--other_dir",
        str(tmp_path / "other"),
    ]
    assert any("other/" in w and "none of the classes" in w for w in check.warnings)
    assert check.image_sizes == {"24x24": 24}
    assert [p.parent.name for p in check.thumbnails["gear"]] == ["gear"] * 4
    json.dumps(check.to_dict())  # the app's API answer must serialise


def test_other_is_ignored_when_not_used_and_val_counts_as_validation(tmp_path):
    write_images(tmp_path, {"train/a": 5, "train/b": 5, "val/a": 1, "val/b": 1, "other": 3})

    check = check_training_data(tmp_path, use_other=False)

    assert check.can_train, check.refusals
    assert check.data_flags == ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")]
    assert "other" not in check.counts
    assert any("other/ is ignored" in w for w in check.warnings)


def test_class_folders_train_from_the_root_and_other_beside_them_is_refused(tmp_path):
    write_images(tmp_path, {"scratch": 5, "dent": 5})

    check = check_training_data(tmp_path)

    assert check.can_train, check.refusals
    assert check.layout == "one folder per class (validation held out by training)"
    assert check.counts == {"train": {"dent": 5, "scratch": 5}}
    assert check.data_flags == ["--train_dir", str(tmp_path)]

    # --train_dir would read other/ as a third class: say so rather than map it.
    write_images(tmp_path, {"other": 2})
    assert any("other/ sits beside the class folders" in r for r in check_training_data(tmp_path).refusals)
    assert check_training_data(tmp_path, use_other=False).counts["train"]["other"] == 2


def test_a_zip_of_one_folder_is_descended_and_macos_forks_are_ignored(tmp_path):
    members = {f"parts/train/{name}/{i}.png": noise_png_bytes(next(_seed)) for name in ("a", "b") for i in range(5)}
    members["__MACOSX/parts/train/a/._0.png"] = b"\x00\x05\x16\x07 resource fork"
    members["parts/README.txt"] = b"generated parts"
    extract_zip(write_zip(tmp_path / "upload.zip", members), tmp_path / "data")
    (tmp_path / "data" / "__MACOSX" / "parts").mkdir(parents=True)  # as macOS zips carry it

    check = check_training_data(tmp_path / "data")

    assert check.root == tmp_path / "data" / "parts"
    assert check.data_flags == ["--train_dir", str(tmp_path / "data" / "parts" / "train")]
    assert check.counts["train"] == {"a": 5, "b": 5}


def test_one_class_is_refused_in_the_words_of_check_classes(tmp_path):
    write_images(tmp_path, {"train/gear": 5})

    check = check_training_data(tmp_path)

    assert not check.can_train
    with pytest.raises(DataError) as raised:
        classification_data.check_classes({"gear": 5})
    assert check.refusals == [str(raised.value)] == class_problems({"gear": 5})
    assert "only one class" in check.refusals[0]


def test_an_empty_class_is_refused_in_the_words_of_check_classes(tmp_path):
    split_folders(tmp_path)
    (tmp_path / "train" / "washer").mkdir()

    check = check_training_data(tmp_path)

    assert check.counts["train"]["washer"] == 0
    with pytest.raises(DataError) as raised:
        classification_data.check_classes(check.counts["train"])
    assert check.refusals == [str(raised.value)]
    assert str(raised.value) == "Class 'washer' has no readable training images. Add images or remove the class."


def test_class_problems_lists_every_empty_class_and_check_classes_passes_good_counts():
    assert class_problems({"a": 0, "b": 3, "c": 0}) == [
        "Class 'a' has no readable training images. Add images or remove the class.",
        "Class 'c' has no readable training images. Add images or remove the class.",
    ]
    assert class_problems({"a": 1, "b": 1}) == []
    classification_data.check_classes({"a": 1, "b": 1})  # no error


def test_a_few_unreadable_files_are_listed_and_too_many_are_refused(tmp_path):
    write_images(tmp_path, {"train/a": 10, "train/b": 10})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "train" / "b" / "readme.txt").write_text("not an image, and the CLI never reads it")

    few = check_training_data(tmp_path)

    # 1 of 21 is under 5%: listed, not refused; the text file is ignored, not unreadable.
    assert few.can_train, few.refusals
    assert [path for path, _ in few.unreadable] == ["train/a/broken.png"]
    assert few.counts["train"] == {"a": 10, "b": 10}
    assert any("not images" in w and "readme.txt" in w for w in few.warnings)

    (tmp_path / "train" / "b" / "empty.jpg").write_bytes(b"")
    many = check_training_data(tmp_path)

    assert len(many.unreadable) == 2
    assert many.refusals == [unreadable_problem("train", 2, 22, 0.05, many.unreadable)]
    assert many.refusals[0].startswith("2 of 22 train images cannot be read (more than --max_bad_fraction 5%). ")
    assert "train/a/broken.png: the image data is truncated or corrupt" in many.refusals[0]
    assert check_training_data(tmp_path, max_bad_fraction=0.1).can_train


def test_the_check_refuses_unreadable_files_like_the_training_cli(tmp_path):
    from train.classification.train import DataArguments, load_training_data

    write_images(tmp_path, {"train/a": 4, "train/b": 4})
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not a png at all")
    check = check_training_data(tmp_path)

    with pytest.raises(DataError) as raised:
        load_training_data(DataArguments(train_dir=str(tmp_path / "train")), multi_label=False, seed=0)

    # The CLI names files by absolute path; the check by path inside the data folder.
    assert check.refusals == [str(raised.value).replace(f"{tmp_path}/", "")]


def test_unreadable_problem_is_none_at_or_under_the_fraction():
    assert unreadable_problem("test", 0, 10, 0.0) is None
    assert unreadable_problem("test", 1, 20, 0.05) is None
    assert unreadable_problem("test", 2, 20, 0.05) == (
        "2 of 20 test images cannot be read (more than --max_bad_fraction 5%). "
        "Fix or remove them, or raise --max_bad_fraction."
    )


def test_duplicates_across_splits_are_found_and_only_warned_about(tmp_path):
    split_folders(tmp_path)
    shutil.copy(tmp_path / "train" / "gear" / "000.png", tmp_path / "test" / "nut" / "copy.png")
    shutil.copy(tmp_path / "train" / "gear" / "001.png", tmp_path / "train" / "nut" / "copy.png")

    check = check_training_data(tmp_path)

    assert check.can_train
    assert check.duplicates == [("train/gear/000.png", "test/nut/copy.png")]
    assert any("appear in two splits" in w for w in check.warnings)
    assert any("same split" in w and "train/nut/copy.png" in w for w in check.warnings)


def test_a_multi_label_csv_maps_to_csv_flags_and_counts_per_label(tmp_path):
    write_images(tmp_path, {"images": 6})
    rows = [("images/000.png", "rust;dent"), ("images/001.png", "rust"), ("images/002.png", "dent")]
    rows += [("images/003.png", "rust;scratch"), ("images/004.png", "scratch")]
    write_label_csv(tmp_path / "train.csv", rows)
    write_label_csv(tmp_path / "validation.csv", [("images/005.png", "dent;rust")])

    check = check_training_data(tmp_path, "multi_label")

    assert check.can_train, check.refusals
    assert check.counts["train"] == {"dent": 2, "rust": 3, "scratch": 2}
    assert check.counts["validation"] == {"dent": 1, "rust": 1, "scratch": 0}
    assert check.data_flags == [
        "--train_csv",
        str(tmp_path / "train.csv"),
        "--validation_csv",
        str(tmp_path / "validation.csv"),
    ]
    # The same CSV as a classifier trains each combination as a class: a warning points to the task.
    as_classifier = check_training_data(tmp_path, "classifier")
    assert as_classifier.counts["train"]["rust;dent"] == 1
    assert any("pick the multi-label classifier task" in w for w in as_classifier.warnings)


def test_csv_paths_outside_the_data_folder_are_never_opened(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(noise_png_bytes(1))
    data = tmp_path / "data"
    write_images(data, {"images": 2})
    write_label_csv(data / "labels.csv", [("images/000.png", "a"), ("images/001.png", "b"), (str(outside), "a")])

    check = check_training_data(data, "multi_label")

    assert check.unreadable == [(str(outside), "it is outside the data folder; give paths inside it")]
    assert all(outside not in paths for paths in check.thumbnails.values())


def write_label_csv(path, rows):
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([("path", "label"), *rows])


def test_kaggle_steel_is_checked_as_a_segmenter_and_refused_as_a_classifier(tmp_path):
    info = write_steel(tmp_path, n=6, height=32, width=64)

    check = check_training_data(tmp_path, "segmenter")

    assert check.can_train, check.refusals
    assert check.layout == "Kaggle steel layout (train.csv + train_images/)"
    assert check.data_flags == ["--data_dir", str(tmp_path)]
    assert check.counts["train"] == {
        **{f"defect_{k}": count for k, count in info["images_per_class"].items()},
        "clean": info["clean_images"],
    }
    assert check.image_sizes == {"64x32": 6}

    as_classifier = check_training_data(tmp_path, "classifier")
    assert as_classifier.refusals == ["This looks like segmentation data: pick the defect segmenter task."]
    assert as_classifier.data_flags == []


def test_kaggle_images_missing_from_the_folder_are_refused_with_the_first_name(tmp_path):
    write_steel(tmp_path, n=4, height=32, width=64)
    with (tmp_path / "train.csv").open("a") as file:
        file.write("gone.jpg,1,1 3\n")

    check = check_training_data(tmp_path, "segmenter")

    assert any(r.startswith("1 of ") and "(first: gone.jpg)" in r for r in check.refusals)


def test_mask_folders_count_defect_classes_and_refuse_missing_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index, classes in enumerate([(0,), (0, 2), (0, 1, 3)]):
        (tmp_path / "images" / f"{index}.png").write_bytes(noise_png_bytes(next(_seed), (16, 8)))
        mask = np.zeros((8, 16), dtype=np.uint8)
        for position, class_id in enumerate(classes):
            mask[:, position] = class_id
        Image.fromarray(mask, mode="L").save(tmp_path / "masks" / f"{index}.png")

    check = check_training_data(tmp_path, "segmenter")

    assert check.can_train, check.refusals
    assert check.layout == "images/ + masks/"
    assert check.data_flags == ["--mask_dir", str(tmp_path)]
    assert check.counts["train"] == {"defect_1": 1, "defect_2": 1, "defect_3": 1, "defect_4": 0, "clean": 1}

    (tmp_path / "images" / "3.png").write_bytes(noise_png_bytes(next(_seed), (16, 8)))
    missing = check_training_data(tmp_path, "segmenter")
    assert any("1 images in images/ have no mask in masks/ (first: 3.png)" in r for r in missing.refusals)


def test_a_folder_with_no_layout_names_the_expected_layouts_and_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()

    refusals = check_training_data(tmp_path).refusals

    assert len(refusals) == 1
    assert refusals[0].startswith(f"No image classifier data layout found in '{tmp_path}'. Expected one of:\n")
    assert "train/<class>/<image>" in refusals[0]
    assert refusals[0].endswith("Found: empty/, notes.txt.")
    assert "images/<name>.png + masks/<name>.png" in check_training_data(tmp_path, "segmenter").refusals[0]


def test_images_deeper_than_the_class_folders_are_refused(tmp_path):
    write_images(tmp_path, {"train/a": 3, "train/b": 3, "train/b/close-ups": 1})

    check = check_training_data(tmp_path)

    assert any("train/b/close-ups/000.png" in r and "not directly inside a class folder" in r for r in check.refusals)


def test_an_unknown_task_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="anomaly"):
        check_training_data(tmp_path, "anomaly")


def test_an_other_folder_with_an_empty_half_is_left_out_with_a_warning(tmp_path):
    split_folders(tmp_path)
    write_images(tmp_path, {"other/calibration": 2})
    (tmp_path / "other" / "holdout").mkdir()

    check = check_training_data(tmp_path)

    assert check.can_train, check.refusals
    assert "--other_dir" not in check.data_flags
    assert any("other/holdout/ holds no files" in w for w in check.warnings)

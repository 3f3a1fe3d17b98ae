"""Segmentation loaders: Kaggle CSV (both forms), mask folders and hub-style datasets, with their refusals."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image

from common.rle import rle_encode
from datagen.steel import steel_sample, write_steel
from train.data import DataError
from train.segmentation.data import (
    SegmentationData,
    decode_mask,
    default_id2label,
    defect_presence,
    load_hub_segmentation,
    load_kaggle,
    load_mask_folders,
    split_by_image,
)

SMALL = {"height": 64, "width": 400}
N_IMAGES = 40
SEED = 2


@pytest.fixture(scope="module")
def steel_masks(tmp_path_factory):
    """A generated Kaggle set and the masks it was written from, by ImageId."""
    root = tmp_path_factory.mktemp("steel")
    write_steel(root, N_IMAGES, SEED, **SMALL)
    taken, masks = set(), {}
    for index in range(N_IMAGES):
        sample = steel_sample(SEED, index, taken=taken, **SMALL)
        taken.add(sample.image_id)
        masks[sample.image_id] = sample.mask
    return root, masks


@pytest.fixture
def steel(tmp_path, steel_masks):
    """A private copy of the Kaggle set, for tests that break it."""
    root = tmp_path / "steel"
    shutil.copytree(steel_masks[0], root)
    return root


def _read_rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def _write_rows(path, rows):
    with open(path, "w", newline="") as file:
        csv.writer(file, lineterminator="\n").writerows(rows)


# ---------------------------------------------------------------------------------------------
# Kaggle
# ---------------------------------------------------------------------------------------------


def test_kaggle_new_form_keeps_clean_images_and_decodes_every_mask(steel_masks):
    root, masks = steel_masks
    data = load_kaggle(root)
    train = data.splits["train"]
    assert sorted(train["image_id"]) == sorted(masks)  # Clean images (no CSV row) included.
    assert data.skipped == []
    assert data.id2label == {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}
    clean = 0
    for example in train:
        expected = masks[example["image_id"]]
        np.testing.assert_array_equal(decode_mask(example), expected)
        np.testing.assert_array_equal(decode_mask(example, 64, 400), expected)
        present = [int((expected == class_id).any()) for class_id in range(1, 5)]
        assert defect_presence(example) == present == example["defects"]
        assert (example["height"], example["width"]) == (64, 400)
        clean += not any(present)
    assert 0 < clean < N_IMAGES


def test_kaggle_accepts_the_csv_path_and_an_images_dir(steel, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(steel / "train_images", moved)
    data = load_kaggle(steel / "train.csv", moved)
    assert len(data.splits["train"]) == N_IMAGES
    assert all(path.startswith(str(moved)) for path in data.splits["train"]["image"])


def _to_old_form(root, drop=()):
    """Rewrites train.csv in the older ImageId_ClassId form: four rows per image."""
    rows = _read_rows(root / "train.csv")[1:]
    rles = {(image_id, int(class_id)): rle for image_id, class_id, rle in rows}
    names = sorted(path.name for path in (root / "train_images").iterdir() if path.name not in drop)
    old = [["ImageId_ClassId", "EncodedPixels"]]
    old += [[f"{name}_{class_id}", rles.get((name, class_id), "")] for name in names for class_id in range(1, 5)]
    _write_rows(root / "train.csv", old)


def test_kaggle_old_form_gives_the_same_masks(steel, steel_masks):
    _to_old_form(steel)
    data = load_kaggle(steel)
    train = data.splits["train"]
    assert len(train) == N_IMAGES
    for example in train:
        np.testing.assert_array_equal(decode_mask(example), steel_masks[1][example["image_id"]])


def test_kaggle_old_form_uses_only_the_images_it_lists(steel):
    # The older CSV lists every image, so an unlisted one is not silently taken as clean.
    unlisted = sorted(path.name for path in (steel / "train_images").iterdir())[0]
    _to_old_form(steel, drop={unlisted})
    assert unlisted not in load_kaggle(steel).splits["train"]["image_id"]


def test_kaggle_without_dataset_info_uses_default_names(steel):
    (steel / "dataset_info.json").unlink()
    expected = {0: "background", 1: "defect_1", 2: "defect_2", 3: "defect_3", 4: "defect_4"}
    assert load_kaggle(steel).id2label == default_id2label() == expected


def _edit_first_row(root, column, value):
    rows = _read_rows(root / "train.csv")
    rows[1][column] = value
    _write_rows(root / "train.csv", rows)
    return rows[1][0]


@pytest.mark.parametrize("class_id", ["5", "0", "x", ""])
def test_kaggle_refuses_unknown_class_ids(steel, class_id):
    image_id = _edit_first_row(steel, 1, class_id)
    with pytest.raises(DataError, match=rf"train\.csv line 2 \(ImageId {image_id}\): ClassId '{class_id}'"):
        load_kaggle(steel)


def test_kaggle_malformed_rle_names_the_row(steel):
    image_id = _edit_first_row(steel, 2, "5 3 6 1")
    rows = _read_rows(steel / "train.csv")
    with pytest.raises(DataError) as caught:
        load_kaggle(steel)
    message = str(caught.value)
    assert f"train.csv line 2 (ImageId {image_id}, ClassId {rows[1][1]})" in message
    assert "overlaps run 1" in message


def test_kaggle_rle_for_another_image_size_is_refused(steel):
    _edit_first_row(steel, 2, f"{64 * 400 - 1} 5")
    with pytest.raises(DataError, match="goes past pixel 25600, the last of a 64 x 400 image"):
        load_kaggle(steel)


def test_kaggle_refuses_duplicate_image_class_rows(steel):
    rows = _read_rows(steel / "train.csv")
    _write_rows(steel / "train.csv", [*rows, rows[1]])
    with pytest.raises(DataError, match=rf"lines 2 and {len(rows) + 1} both give ImageId {rows[1][0]}"):
        load_kaggle(steel)


def test_kaggle_skips_and_counts_a_few_missing_images(steel):
    missing = _read_rows(steel / "train.csv")[1][0]
    (steel / "train_images" / missing).unlink()
    data = load_kaggle(steel)
    assert missing not in data.splits["train"]["image_id"]
    assert [name for name, _ in data.skipped] == [missing]
    assert "not in" in data.skipped[0][1]


def test_kaggle_refuses_many_missing_images(steel):
    listed = sorted({row[0] for row in _read_rows(steel / "train.csv")[1:]})
    for name in listed[:5]:  # 5 of 40 is more than 5%: a wrong folder, not lost files.
        (steel / "train_images" / name).unlink()
    with pytest.raises(DataError, match=rf"5 of {len(listed)} images .* more than 5%.*first: {listed[0]}"):
        load_kaggle(steel)


def test_kaggle_unreadable_image_is_skipped(steel):
    name = sorted(path.name for path in (steel / "train_images").iterdir())[0]
    (steel / "train_images" / name).write_bytes(b"not a jpeg")
    data = load_kaggle(steel)
    assert data.skipped[0][0] == name and "header" in data.skipped[0][1]


def test_kaggle_refuses_unknown_columns_and_missing_paths(steel, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_kaggle(tmp_path / "nowhere")
    with pytest.raises(DataError, match="Image folder"):
        load_kaggle(steel, tmp_path / "no_images")
    _write_rows(steel / "train.csv", [["path", "label"], ["a.jpg", "1"]])
    with pytest.raises(DataError, match="ImageId,ClassId,EncodedPixels"):
        load_kaggle(steel)


# ---------------------------------------------------------------------------------------------
# images/ + masks/ folders
# ---------------------------------------------------------------------------------------------


def _class_map(seed, height=32, width=48):
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.uint8)
    if seed % 3:  # Every third image is clean.
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        mask[y : y + 8, x : x + 8] = 1 + seed % 4
    return mask


def _write_mask_folders(root, count=6, palette_from=3):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    maps = {}
    for index in range(count):
        stem = f"img_{index:02d}"
        pixels = np.random.default_rng(index).integers(0, 255, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{stem}{'.jpg' if index % 2 else '.png'}")
        maps[stem] = _class_map(index)
        mask = Image.fromarray(maps[stem])
        if index >= palette_from:  # P mode, as many annotation tools save masks.
            mask = mask.convert("P")
        mask.save(root / "masks" / f"{stem}.png")
    return maps


def test_mask_folders_load_and_decode(tmp_path):
    maps = _write_mask_folders(tmp_path)
    data = load_mask_folders(tmp_path)
    train = data.splits["train"]
    assert sorted(train["image_id"]) == sorted(maps)
    assert data.id2label == default_id2label()
    for example in train:
        expected = maps[example["image_id"]]
        np.testing.assert_array_equal(decode_mask(example), expected)
        assert defect_presence(example) == [int((expected == c).any()) for c in range(1, 5)]


def test_mask_folders_refuse_or_skip_an_image_without_mask(tmp_path):
    _write_mask_folders(tmp_path)
    (tmp_path / "masks" / "img_02.png").unlink()
    with pytest.raises(DataError, match=r"1 images .* have no mask .*img_02\.png.*skip_missing_masks=True"):
        load_mask_folders(tmp_path)
    data = load_mask_folders(tmp_path, skip_missing_masks=True)
    assert "img_02" not in data.splits["train"]["image_id"]
    assert data.skipped == [(str(tmp_path / "images" / "img_02.png"), f"no mask img_02.png in {tmp_path / 'masks'}")]


def test_mask_of_another_size_is_refused_naming_both_sizes(tmp_path):
    _write_mask_folders(tmp_path)
    Image.new("L", (40, 30)).save(tmp_path / "masks" / "img_01.png")
    with pytest.raises(DataError, match=r"img_01\.png is 40 x 30 .*img_01\.jpg is 48 x 32"):
        load_mask_folders(tmp_path)


def test_mask_with_unknown_class_values_is_refused(tmp_path):
    _write_mask_folders(tmp_path)
    Image.fromarray(np.full((32, 48), 255, dtype=np.uint8)).save(tmp_path / "masks" / "img_00.png")
    with pytest.raises(DataError, match=r"img_00\.png .* holds values \[255\].*0/255 binary mask"):
        load_mask_folders(tmp_path)


def test_colour_mask_is_refused(tmp_path):
    _write_mask_folders(tmp_path)
    Image.new("RGB", (48, 32)).save(tmp_path / "masks" / "img_00.png")
    with pytest.raises(DataError, match="mode RGB; masks must be single-channel"):
        load_mask_folders(tmp_path)


# ---------------------------------------------------------------------------------------------
# Hub-style datasets, built locally (the Hub itself is unreachable offline)
# ---------------------------------------------------------------------------------------------


def _hub_style(count=8, mask_size=(48, 32)):
    images = [Image.fromarray(np.full((32, 48, 3), 40 * i % 255, dtype=np.uint8)) for i in range(count)]
    masks = [Image.fromarray(_class_map(i)).resize(mask_size, Image.Resampling.NEAREST) for i in range(count)]
    dataset = Dataset.from_dict({"pixel_values": images, "label": masks})
    return dataset.cast_column("pixel_values", ImageFeature()).cast_column("label", ImageFeature())


def test_hub_dataset_saved_to_disk_goes_through_load_hub_segmentation(tmp_path):
    DatasetDict({"train": _hub_style(), "validation": _hub_style(3)}).save_to_disk(tmp_path / "saved")
    data = load_hub_segmentation(str(tmp_path / "saved"), image_column="pixel_values", mask_column="label")
    assert set(data.splits) == {"train", "validation"}
    train = data.splits["train"]
    assert train.column_names == ["image_id", "image", "mask", "height", "width", "defects"]
    assert len(set(train["image_id"])) == 8  # Bytes-only images are told apart by position.
    assert isinstance(train[0]["image"], dict) and train[0]["image"]["bytes"]  # Kept undecoded.
    for index, example in enumerate(train):
        np.testing.assert_array_equal(decode_mask(example), _class_map(index))
        assert example["defects"] == [int((_class_map(index) == c).any()) for c in range(1, 5)]
    assert split_by_image(data) is data  # It already has a validation split.


def test_hub_dataset_as_parquet_folder_loads_with_load_dataset(tmp_path):
    _hub_style().to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    data = load_hub_segmentation(str(tmp_path / "repo"), image_column="pixel_values", mask_column="label")
    assert len(data.splits["train"]) == 8
    np.testing.assert_array_equal(decode_mask(data.splits["train"][1]), _class_map(1))


def test_hub_dataset_with_wrong_mask_size_or_column_is_refused(tmp_path):
    _hub_style(mask_size=(24, 16)).save_to_disk(tmp_path / "small_masks")
    with pytest.raises(DataError, match="is 24 x 16 .* is 48 x 32"):
        load_hub_segmentation(str(tmp_path / "small_masks"), image_column="pixel_values", mask_column="label")
    with pytest.raises(DataError, match=r"no column 'mask'.*mask_column="):
        load_hub_segmentation(str(tmp_path / "small_masks"), image_column="pixel_values")


def test_unreachable_hub_id_names_the_offline_fix():
    with pytest.raises(DataError, match="Offline, pass a local folder"):
        load_hub_segmentation("someone/steel-defects-that-does-not-exist")


# ---------------------------------------------------------------------------------------------
# Per-example helpers and the train/validation split
# ---------------------------------------------------------------------------------------------


def test_decode_mask_and_presence_from_bare_rows():
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2] = 3
    row = {"rles": ["", "", rle_encode(mask == 3), ""], "height": 4, "width": 6, "image_id": "a.jpg"}
    np.testing.assert_array_equal(decode_mask(row), mask)
    assert defect_presence(row) == [0, 0, 1, 0]
    with pytest.raises(DataError, match="no 'rles' or 'mask'"):
        decode_mask({"image": "a.jpg", "height": 4, "width": 6})


def _grouped_data(n_images=200, defect_share=0.4, rows_per_image=2):
    """Several rows per image (e.g. crops), so a split by row would leak images."""
    rng = np.random.default_rng(0)
    image_ids, defects = [], []
    for index in range(n_images):
        flags = [0, 0, int(rng.random() < defect_share), 0] if index % 10 else [1, 0, 0, 0]
        for _ in range(rows_per_image):
            image_ids.append(f"{index:05d}.jpg")
            defects.append(flags)
    dataset = Dataset.from_dict({"image_id": image_ids, "defects": defects})
    return SegmentationData(DatasetDict({"train": dataset}), default_id2label())


def _defect_share(dataset):
    return np.mean([any(flags) for flags in dataset["defects"]])


def test_split_by_image_keeps_images_whole_and_proportions():
    data = _grouped_data()
    split = split_by_image(data, validation_fraction=0.2, seed=1)
    train, validation = split.splits["train"], split.splits["validation"]
    assert len(train) + len(validation) == 400
    assert not set(train["image_id"]) & set(validation["image_id"])
    assert len(set(validation["image_id"])) == pytest.approx(40, abs=1)
    overall = _defect_share(data.splits["train"])
    assert _defect_share(train) == pytest.approx(overall, abs=0.02)
    assert _defect_share(validation) == pytest.approx(overall, abs=0.02)
    # Deterministic by seed; another seed holds out other images.
    assert split_by_image(data, 0.2, seed=1).splits["validation"]["image_id"] == validation["image_id"]
    assert split_by_image(data, 0.2, seed=2).splits["validation"]["image_id"] != validation["image_id"]


def test_split_by_image_on_loaded_kaggle_data(steel_masks):
    split = split_by_image(load_kaggle(steel_masks[0]))
    validation = split.splits["validation"]
    assert 0 < len(validation) < N_IMAGES
    # Both clean and defective images are held out.
    assert 0 < _defect_share(validation) < 1


def test_split_by_image_refusals():
    with pytest.raises(DataError, match="validation_fraction=1.5"):
        split_by_image(_grouped_data(), validation_fraction=1.5)
    with pytest.raises(DataError, match="Cannot split 1 training rows"):
        split_by_image(_grouped_data(n_images=1, rows_per_image=1))


def test_class_names_come_from_dataset_info(tmp_path):
    _write_mask_folders(tmp_path)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"class_names": {"1": "rust", "3": "dent"}}))
    assert load_mask_folders(tmp_path).id2label == {0: "background", 1: "rust", 2: "defect_2", 3: "dent", 4: "defect_4"}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"class_names": {"9": "x"}}))
    with pytest.raises(DataError, match="class_names has key '9'"):
        load_mask_folders(tmp_path)

"""The generated steel set: deterministic, its CSV matches its masks, and its defects look distinct."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label, regionprops
from skimage.morphology import isotropic_dilation

from common.rle import rle_decode
from datagen import steel
from datagen.steel import CLASS_NAMES, draw_steel, read_steel, steel_sample, write_steel
from train.datasets import main as write_dataset

SMALL = {"height": 64, "width": 400}


def _read_csv(path):
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader)
        return header, [(image_id, int(class_id), rle) for image_id, class_id, rle in reader]


def _tree_bytes(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """200 small images: enough to see the class frequencies, fast to write (well under 2 s)."""
    out = tmp_path_factory.mktemp("steel")
    info = write_steel(out, n=200, seed=0, **SMALL)
    return out, info


def test_same_seed_writes_identical_bytes_and_other_seeds_differ(tmp_path):
    first, second, other = (tmp_path / name for name in ("a", "b", "c"))
    write_steel(first, 12, 3, **SMALL)
    write_steel(second, 12, 3, **SMALL)
    write_steel(other, 12, 4, **SMALL)
    assert _tree_bytes(first) == _tree_bytes(second)
    assert set(_tree_bytes(first)) != set(_tree_bytes(other))  # Other ids, so other file names.
    assert (first / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


def test_more_images_only_adds_images(tmp_path):
    write_steel(tmp_path / "few", 5, 1, **SMALL)
    write_steel(tmp_path / "more", 9, 1, **SMALL)
    few = {k: v for k, v in _tree_bytes(tmp_path / "few").items() if k.startswith("train_images/")}
    more = _tree_bytes(tmp_path / "more")
    assert len(few) == 5
    assert all(more[name] == data for name, data in few.items())


def test_layout_ids_and_info(small_set):
    out, info = small_set
    names = sorted(path.name for path in (out / "train_images").iterdir())
    assert len(names) == 200
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", name) for name in names)
    with Image.open(out / "train_images" / names[0]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (400, 64))
    header, rows = _read_csv(out / "train.csv")
    assert header == ["ImageId", "ClassId", "EncodedPixels"]
    assert rows == sorted(rows)
    on_disk = json.loads((out / "dataset_info.json").read_text())
    assert on_disk == info
    assert on_disk["class_names"] == {"1": "pitting", "2": "crazing", "3": "scratches", "4": "patches"}
    assert (on_disk["seed"], on_disk["n"], on_disk["size"]) == (0, 200, {"height": 64, "width": 400})
    per_class = Counter(class_id for _, class_id, _ in rows)
    assert on_disk["images_per_class"] == {str(c): per_class[c] for c in CLASS_NAMES}
    assert on_disk["counts"] == {"train": {name: per_class[c] for c, name in CLASS_NAMES.items()}}
    assert on_disk["clean_images"] == 200 - len({image_id for image_id, _, _ in rows})


def test_csv_decodes_to_exactly_the_drawn_masks(tmp_path):
    write_steel(tmp_path, 40, 5, **SMALL)
    _, rows = _read_csv(tmp_path / "train.csv")
    by_image = {}
    for image_id, class_id, rle in rows:
        by_image.setdefault(image_id, {})[class_id] = rle
    taken = set()
    clean = 0
    for index in range(40):
        sample = steel_sample(5, index, clean_fraction=0.45, taken=taken, **SMALL)
        taken.add(sample.image_id)
        assert (tmp_path / "train_images" / sample.image_id).is_file()
        rles = by_image.get(sample.image_id, {})
        # Exactly the classes in the mask have a row: clean images have none.
        assert set(rles) == set(np.unique(sample.mask).tolist()) - {0}
        clean += not rles
        rebuilt = np.zeros_like(sample.mask)
        for class_id, rle in rles.items():
            rebuilt[rle_decode(rle, sample.mask.shape)] = class_id
        np.testing.assert_array_equal(rebuilt, sample.mask)
    assert 0 < clean < 40
    assert len(by_image) == 40 - clean


def test_class_frequencies_resemble_severstal(small_set):
    out, _ = small_set
    _, rows = _read_csv(out / "train.csv")
    per_class = Counter(class_id for _, class_id, _ in rows)
    classes_per_image = Counter(Counter(image_id for image_id, _, _ in rows).values())
    clean = 200 - sum(classes_per_image.values())
    assert per_class[3] > max(per_class[1], per_class[4]) * 1.5  # Scratches dominate...
    assert per_class[2] < min(per_class[1], per_class[3], per_class[4])  # ... crazing is rarest ...
    assert per_class[2] > 0  # ... but present.
    assert 0.35 * 200 <= clean <= 0.55 * 200
    assert classes_per_image[2] + classes_per_image[3] > 0  # Some images hold several classes.


def test_clean_images_are_on_disk_but_not_in_the_csv(small_set):
    out, info = small_set
    _, rows = _read_csv(out / "train.csv")
    listed = {image_id for image_id, _, _ in rows}
    on_disk = {path.name for path in (out / "train_images").iterdir()}
    assert listed < on_disk
    assert len(on_disk - listed) == info["clean_images"] > 0


def _grey(image):
    return np.asarray(image)[..., 0].astype(np.float64)


def _pair(seed, class_id, height=256, width=1600):
    """The same steel drawn clean and with one defect class: they differ only at the defect."""
    clean, _ = draw_steel(np.random.default_rng(seed), height, width, classes=[])
    defective, mask = draw_steel(np.random.default_rng(seed), height, width, classes=[class_id])
    return _grey(clean), _grey(defective), mask


@pytest.mark.parametrize(("class_id", "rim"), [(1, 1), (2, 1), (3, 1), (4, 10)])
def test_mask_marks_the_changed_pixels(class_id, rim):
    for seed in range(4):
        clean, defective, mask = _pair(seed, class_id)
        assert set(np.unique(mask).tolist()) == {0, class_id}
        # Past a strip edge the noise differs between the two draws; compare the steel only.
        steel = clean > 25
        changed = (np.abs(defective - clean) > 8) & steel
        # Nothing changes outside the mask (patches fade out over a soft rim a few px wide) ...
        assert not (changed & ~isotropic_dilation(mask > 0, rim)).any()
        # ... and the mask is not much looser than the defect: thin lines get 2 px each side.
        assert (np.abs(defective - clean)[mask > 0] > 3).mean() > 0.35


def test_patches_are_darker_than_the_steel_around_them():
    for seed in range(6):
        _, image, mask = _pair(seed, 4)
        patch = mask == 4
        around = isotropic_dilation(patch, 25) & ~isotropic_dilation(patch, 8) & (image > 25)
        assert image[patch].mean() < 0.85 * image[around].mean()
        # Large blobs, not specks.
        assert max(region.area for region in regionprops(label(patch))) > 1500


def test_scratches_are_long_and_horizontal():
    for seed in range(6):
        _, _, mask = _pair(seed, 3)
        for region in regionprops(label(mask == 3)):
            top, left, bottom, right = region.bbox
            assert right - left >= 100
            assert right - left >= 6 * (bottom - top)


def test_pitting_is_clusters_of_small_dots():
    for seed in range(6):
        clean, image, mask = _pair(seed, 1)
        regions = regionprops(label(mask == 1))
        assert len(regions) >= 5
        assert np.median([region.area for region in regions]) < 60
        # Mostly dark pits.
        assert image[mask == 1].mean() < clean[mask == 1].mean()


def test_crazing_is_a_sparse_network_of_dark_lines():
    for seed in range(6):
        clean, image, mask = _pair(seed, 2)
        crazing = mask == 2
        top, left, bottom, right = regionprops(crazing.astype(np.uint8))[0].bbox
        # Lines, not a filled blob: most of the bounding box is clean steel.
        assert crazing[top:bottom, left:right].mean() < 0.6
        assert image[crazing].mean() < clean[crazing].mean() - 5


def _band_drawer(top, bottom):
    def draw(rng, grey, scale, x_range):
        rows, cols = slice(top, bottom), slice(0, grey.shape[1])
        return steel._Mark(rows, cols, np.ones((bottom - top, grey.shape[1]), dtype=bool))

    return draw


def test_later_defect_wins_where_they_overlap(monkeypatch):
    monkeypatch.setattr(steel, "_DRAWERS", {1: _band_drawer(0, 20), 2: _band_drawer(10, 40)})
    _, mask = draw_steel(np.random.default_rng(0), 64, 400, classes=[1, 2])
    # The middle column is never past a strip edge.
    assert mask[:10, 200].tolist() == [1] * 10 and mask[10:40, 200].tolist() == [2] * 30
    _, mask = draw_steel(np.random.default_rng(0), 64, 400, classes=[2, 1])
    assert mask[:20, 200].tolist() == [1] * 20 and mask[20:40, 200].tolist() == [2] * 20


def test_clean_image_and_bad_arguments():
    image, mask = draw_steel(np.random.default_rng(0), 64, 400, classes=[])
    assert image.size == (400, 64) and not mask.any() and mask.dtype == np.uint8
    with pytest.raises(ValueError, match="height=16"):
        draw_steel(np.random.default_rng(0), 16, 400)
    with pytest.raises(ValueError, match="classes=\\[5\\]"):
        draw_steel(np.random.default_rng(0), 64, 400, classes=[5])
    with pytest.raises(ValueError, match="clean_fraction=1.5"):
        write_steel("unused", 3, 0, clean_fraction=1.5)


def test_existing_set_is_refused_then_replaced_without_stale_images(tmp_path):
    write_steel(tmp_path, 6, 0, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_steel(tmp_path, 3, 1, **SMALL)
    write_steel(tmp_path, 3, 1, overwrite=True, **SMALL)
    # A stale image left behind would load as an extra clean image.
    assert len(list((tmp_path / "train_images").iterdir())) == 3


def test_command_line_refuses_a_non_empty_out(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["steel", "--out", str(tmp_path), "--n", "2", "--seed", "0", "--height", "64", "--width", "400"]
    with pytest.raises(SystemExit):
        write_dataset(argv)
    assert "--overwrite" in capsys.readouterr().err
    assert write_dataset([*argv, "--overwrite"]) == 0
    assert len(list((tmp_path / "train_images").glob("*.jpg"))) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"  # Only the data set's files are replaced.


def test_read_steel_gives_back_the_masks_the_training_loader_reads(tmp_path):
    from train.segmentation import data as seg

    write_steel(tmp_path, 8, 3, **SMALL)
    read_back = read_steel(tmp_path)
    loaded = {example[seg.IMAGE_ID]: seg.decode_mask(example) for example in seg.load_kaggle(tmp_path).splits["train"]}
    assert [image.image_id for image in read_back] == sorted(loaded)
    for image in read_back:
        np.testing.assert_array_equal(image.mask, loaded[image.image_id])
    assert any(image.defective for image in read_back) and not all(image.defective for image in read_back)


def test_command_line_sets_the_share_of_clean_strips(tmp_path):
    argv = ["steel", "--n", "6", "--seed", "0", "--height", "64", "--width", "400"]
    assert write_dataset([*argv, "--out", str(tmp_path / "clean"), "--clean-fraction", "1.0"]) == 0
    assert write_dataset([*argv, "--out", str(tmp_path / "dirty"), "--clean-fraction", "0.0"]) == 0
    assert not any(image.defective for image in read_steel(tmp_path / "clean"))
    assert all(image.defective for image in read_steel(tmp_path / "dirty"))

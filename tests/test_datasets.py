"""python -m train.datasets: offline data sets a user can train on."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from train.datasets import main
from train.digits import write_digits
from train.synthetic_parts import PART_KINDS, write_parts


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("parts")
    write_parts(out, seed=3, size=64, n_per_class=24, n_other=8)
    return out


def test_digits_are_all_there_stratified_and_rgb(tmp_path):
    info = write_digits(tmp_path, seed=0, size=32)
    files = sorted(tmp_path.glob("*/*/*.png"))
    assert len(files) == 1797
    for split in ("train", "validation", "test"):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == [str(d) for d in range(10)]
        assert min(info["counts"][split].values()) >= 20
    image = Image.open(files[0])
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image.convert("L"))
    assert pixels.max() > 200 and pixels.min() < 80  # paper and ink


def test_parts_are_deterministic_by_seed(parts, tmp_path):
    again = tmp_path / "again"
    write_parts(again, seed=3, size=64, n_per_class=24, n_other=8)
    other_seed = tmp_path / "other-seed"
    write_parts(other_seed, seed=4, size=64, n_per_class=24, n_other=8)
    sample = sorted((parts / "train" / "gear").glob("*.png"))[:3]
    assert [_digest(p) for p in sample] == [_digest(again / p.relative_to(parts)) for p in sample]
    assert [_digest(p) for p in sample] != [_digest(other_seed / p.relative_to(parts)) for p in sample]


def test_every_part_image_has_a_matching_mask(parts):
    for split in ("train", "validation", "test"):
        assert sorted(p.name for p in (parts / split).iterdir()) == sorted(PART_KINDS)
    for image_path in sorted(parts.glob("train/*/*.png"))[::7]:
        mask = np.asarray(Image.open(parts / "masks" / image_path.parent.name / image_path.name)) > 127
        image = np.asarray(Image.open(image_path).convert("RGB")).astype(float)
        assert mask.shape == image.shape[:2]
        assert 0.005 < mask.mean() < 0.7, image_path.name
        # The part stands out from what surrounds it.
        assert np.abs(image[mask].mean(0) - image[~mask].mean(0)).max() > 3 or image[mask].std() > 10


def test_other_images_have_no_class_and_no_mask(parts):
    others = sorted((parts / "other").rglob("*.png"))
    assert len(others) == 8
    assert not any((parts / "masks").rglob(others[0].name))


def test_part_shapes_tell_the_classes_apart(parts):
    """Simple shape measurements of the mask (holes, solidity, elongation) already separate the
    classes well above chance, so a network has a real signal to learn; colour is random."""
    from skimage.measure import label, regionprops
    from sklearn.ensemble import RandomForestClassifier

    def features(split):
        xs, ys = [], []
        for index, kind in enumerate(PART_KINDS):
            for path in sorted((parts / split / kind).glob("*.png")):
                mask = np.asarray(Image.open(parts / "masks" / kind / path.name)) > 127
                region = max(regionprops(label(mask)), key=lambda r: r.area)
                xs.append([region.solidity, region.eccentricity, region.euler_number, region.extent,
                           region.perimeter**2 / max(region.area, 1)])  # fmt: skip
                ys.append(index)
        return np.array(xs), np.array(ys)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    accuracy = RandomForestClassifier(random_state=0).fit(x_train, y_train).score(x_test, y_test)
    assert accuracy > 3 / len(PART_KINDS)


def test_imagefolder_loads_the_three_labelled_splits(parts, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    loaded = load_dataset("imagefolder", data_dir=str(parts))
    assert sorted(loaded) == ["test", "train", "validation"]
    assert sorted(loaded["train"].features["label"].names) == sorted(PART_KINDS)
    assert len(loaded["train"]) + len(loaded["validation"]) + len(loaded["test"]) == 24 * len(PART_KINDS)


def test_cli_refuses_to_write_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit):
        main(["digits", "--out", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_cli_rejects_unknown_names_and_bad_splits(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["cats", "--out", str(tmp_path / "a")])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["digits", "--out", str(tmp_path / "b"), "--splits", "0.5,0.5"])
    assert "three fractions" in capsys.readouterr().err

"""python -m train.datasets: the real digits and the generated machine parts, written offline."""

from __future__ import annotations

import hashlib
import os

# Loading must never reach the Hub. datasets reads these when it is first imported, so they
# are set before that here, and patched on its config in `offline` in case another test
# module imported it first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits

from datagen.digits import SPLITS, stratified_split, write_digits
from datagen.parts import OTHER_SUBSETS, PART_KINDS, mask_path, write_parts
from train.datasets import main

N_PER_CLASS = 100  # 70 / 15 / 15 per class: enough for the learnability check to be stable
PARTS_SIZE = 64


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _part_images(root, split="*"):
    return sorted(path for path in root.glob(f"{split}/*/*.png") if path.parts[-3] in SPLITS)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("parts")
    write_parts(out, seed=3, size=PARTS_SIZE, n_per_class=N_PER_CLASS, n_other=12)
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, write_digits(out, seed=0, size=24)


@pytest.fixture
def offline(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return datasets


# --- digits -------------------------------------------------------------------------------------


def test_digits_are_all_1797_real_scans_in_their_class_folders(digits):
    out, info = digits
    files = sorted(out.glob("*/*/*.png"))
    assert len(files) == 1797 == sum(sum(counts.values()) for counts in info["counts"].values())
    # File names are rows of load_digits(), so each file must sit under its own label.
    target = load_digits().target
    assert all(target[int(path.stem)] == int(path.parent.name) for path in files)
    image = Image.open(out / "train" / "0" / sorted(p.name for p in (out / "train" / "0").iterdir())[0])
    assert image.mode == "RGB" and image.size == (24, 24)
    grey = np.asarray(image.convert("L"))
    assert grey[0, 0] > 230 and grey.min() < 60  # white paper, dark ink


def test_digits_are_split_stratified(digits):
    out, info = digits
    overall = np.bincount(load_digits().target) / 1797
    for split in SPLITS:
        assert sorted(p.name for p in (out / split).iterdir()) == [str(d) for d in range(10)]
        counts = np.array([info["counts"][split][str(d)] for d in range(10)])
        assert np.abs(counts / counts.sum() - overall).max() < 0.01, split
    assert sum(info["counts"]["train"].values()) == pytest.approx(0.7 * 1797, abs=10)


def test_digit_split_depends_on_the_seed_only():
    labels = load_digits().target
    first = stratified_split(labels, (0.7, 0.15, 0.15), seed=0)
    assert (first == stratified_split(labels, (0.7, 0.15, 0.15), seed=0)).all()
    assert (first != stratified_split(labels, (0.7, 0.15, 0.15), seed=1)).any()


# --- parts --------------------------------------------------------------------------------------


def test_parts_are_byte_identical_for_a_seed_and_differ_for_another(parts, tmp_path):
    # Each image has its own generator, so a smaller run repeats the first images exactly.
    write_parts(tmp_path / "same", seed=3, size=PARTS_SIZE, n_per_class=4, n_other=2)
    write_parts(tmp_path / "other-seed", seed=4, size=PARTS_SIZE, n_per_class=4, n_other=2)
    sample = [parts / "train" / kind / f"{kind}_000{i}.png" for kind in ("gear", "spring") for i in (0, 1)]
    sample += [mask_path(path) for path in sample]
    for path in sample:
        relative = path.relative_to(parts)
        assert _digest(path) == _digest(tmp_path / "same" / relative), relative
        assert _digest(path) != _digest(tmp_path / "other-seed" / relative), relative


def test_every_class_is_in_every_split(parts):
    for split in SPLITS:
        assert sorted(p.name for p in (parts / split).iterdir()) == sorted(PART_KINDS)
        assert all(len(list((parts / split / kind).glob("*.png"))) >= 15 for kind in PART_KINDS)


def test_every_part_image_has_a_mask_that_outlines_a_visible_part(parts):
    fractions = []
    for path in _part_images(parts):
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        mask_image = Image.open(mask_path(path))
        assert mask_image.mode == "L" and mask_image.size == (PARTS_SIZE, PARTS_SIZE), path.name
        mask = np.asarray(mask_image)
        assert set(np.unique(mask)) == {0, 255}, path.name
        part = mask == 255
        fractions.append(part.mean())
        assert 0.005 < part.mean() < 0.7, path.name
        # A 3-pixel ring just outside the mask is background (or shadow), and looks different.
        ring = (np.asarray(mask_image.filter(ImageFilter.MaxFilter(7))) == 255) & ~part
        assert np.abs(image[part].mean(0) - image[ring].mean(0)).max() > 10, path.name
    assert 0.02 < np.median(fractions) < 0.3


def test_other_images_have_no_class_and_no_mask(parts):
    assert sorted(p.name for p in (parts / "other").iterdir()) == sorted(OTHER_SUBSETS)
    others = sorted((parts / "other").rglob("*.png"))
    assert len(others) == 12 and all(len(list((parts / "other" / s).glob("*.png"))) == 6 for s in OTHER_SUBSETS)
    mask_names = {path.name for path in (parts / "masks").rglob("*.png")}
    assert mask_names == {path.name for path in _part_images(parts)}
    assert not mask_names & {path.name for path in others}


def _features(paths):
    """Position- and rotation-tolerant features: LBP histograms and pooled random filters."""
    from scipy.signal import fftconvolve
    from skimage.feature import local_binary_pattern

    greys = np.stack([np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255 for path in paths])
    # Random 5x5 filters on 2x-downsampled images, max- and mean-pooled over the whole image.
    filters = np.random.default_rng(0).standard_normal((16, 5, 5)).astype(np.float32)
    filters -= filters.mean(axis=(1, 2), keepdims=True)
    small = greys.reshape(len(greys), PARTS_SIZE // 2, 2, PARTS_SIZE // 2, 2).mean(axis=(2, 4))
    responses = np.abs(fftconvolve(small[:, None], filters[None], mode="valid", axes=(2, 3)))
    pooled = [responses.mean(axis=(2, 3)), responses.max(axis=(2, 3))]
    textures = []
    for grey in (greys * 255).astype(np.uint8):
        # Rotation-invariant "uniform" codes take points + 2 values at each (points, radius).
        histograms = []
        for points, radius in ((8, 1), (16, 2), (16, 4)):
            codes = local_binary_pattern(grey, points, radius, "uniform").astype(int).ravel()
            histograms.append(np.bincount(codes, minlength=points + 2) / codes.size)
        textures.append(np.concatenate(histograms))
    return np.hstack([*pooled, np.array(textures)])


def test_a_tiny_classifier_tells_the_parts_apart(parts):
    """Pose, size, colour and background are random, so only shape can carry the class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, validation = _part_images(parts, "train"), _part_images(parts, "validation")
    labels = {split: [PART_KINDS.index(path.parent.name) for path in paths] for split, paths in
              (("train", train), ("validation", validation))}  # fmt: skip
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    classifier.fit(_features(train), labels["train"])
    accuracy = classifier.score(_features(validation), labels["validation"])
    assert accuracy > 2 / len(PART_KINDS), accuracy


# --- loading with datasets ----------------------------------------------------------------------


def test_imagefolder_loads_exactly_the_three_labelled_splits(parts, offline, tmp_path):
    loaded = offline.load_dataset("imagefolder", data_dir=str(parts), cache_dir=str(tmp_path))
    assert sorted(loaded) == sorted(SPLITS)
    for split in SPLITS:
        # Masks and other/ must not be swept into a split: the counts match the class folders.
        assert len(loaded[split]) == len(_part_images(parts, split)), split
        assert loaded[split].features["label"].names == sorted(PART_KINDS)
    row = loaded["validation"][0]
    assert row["image"].size == (PARTS_SIZE, PARTS_SIZE)
    assert loaded["validation"].features["label"].int2str(row["label"]) in PART_KINDS


def test_imagefolder_loads_one_split_folder(digits, offline, tmp_path):
    out, info = digits
    loaded = offline.load_dataset("imagefolder", data_dir=str(out / "test"), cache_dir=str(tmp_path))
    assert loaded["train"].features["label"].names == [str(d) for d in range(10)]
    assert len(loaded["train"]) == sum(info["counts"]["test"].values())


# --- command line -------------------------------------------------------------------------------


def test_cli_writes_parts_and_prints_counts(tmp_path, capsys):
    assert main(["parts", "--out", str(tmp_path / "p"), "--size", "32", "--n-per-class", "7", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "gear" in printed and "other/calibration: 3" in printed
    assert len(_part_images(tmp_path / "p")) == 7 * len(PART_KINDS)
    assert (tmp_path / "p" / "dataset_info.json").is_file()


def test_cli_refuses_a_non_empty_folder_unless_told_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as refused:
        main(["parts", "--out", str(out), "--size", "32", "--n-per-class", "6"])
    assert refused.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    assert main(["parts", "--out", str(out), "--size", "32", "--n-per-class", "10", "--overwrite"]) == 0
    assert main(["parts", "--out", str(out), "--size", "32", "--n-per-class", "7", "--overwrite"]) == 0
    # The smaller second run leaves no stale images behind, and the user's file stays.
    assert len(_part_images(out)) == 7 * len(PART_KINDS)
    assert len(list((out / "masks").rglob("*.png"))) == 7 * len(PART_KINDS)
    assert (out / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cats"], "invalid choice: 'cats'"),
        (["digits", "--n-per-class", "5"], "--n-per-class does not apply to 'digits'"),
        (["digits", "--splits", "0.5,0.5"], "--splits"),
        (["parts", "--n-per-class", "2"], "n_per_class=2"),
        (["parts", "--size", "16"], "size=16"),
    ],
)
def test_cli_explains_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as error:
        main([*argv, "--out", str(tmp_path / "out")])
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""The generated anomaly-detection sets: MVTec AD's layout, exact masks, the same files for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datagen import GENERATORS
from datagen.anomaly import (
    PART_PRODUCTS,
    STEEL_DEFECTS,
    draw_defective_part,
    draw_good_part,
    part_design,
    write_anomaly_parts,
)
from train.datasets import main


def _pngs(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


@pytest.fixture(scope="module")
def steel(tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly-steel")
    GENERATORS["anomaly-steel"](out, seed=0, n=6, n_per_class=2, height=32, width=128)
    return out


def test_steel_set_has_mvtec_layout_and_a_mask_for_every_defective_image(steel):
    assert len(list((steel / "train" / "good").glob("*.png"))) == 6
    for split, per_type in (("test", 2), ("validation", 1)):
        assert len(list((steel / split / "good").glob("*.png"))) == 2
        for defect in STEEL_DEFECTS:
            images = sorted((steel / split / defect).glob("*.png"))
            assert len(images) == per_type
            for image in images:
                mask = np.asarray(Image.open(steel / "ground_truth" / defect / f"{image.stem}_mask.png"))
                assert mask.shape == (32, 128) and set(np.unique(mask)) == {0, 255}
    assert not (steel / "ground_truth" / "good").exists()


def test_steel_set_is_byte_identical_for_a_seed(steel, tmp_path):
    GENERATORS["anomaly-steel"](tmp_path / "again", seed=0, n=6, n_per_class=2, height=32, width=128)
    GENERATORS["anomaly-steel"](tmp_path / "other", seed=1, n=6, n_per_class=2, height=32, width=128)
    first = steel / "test" / "pitting" / "000.png"
    assert _pngs(steel) == _pngs(tmp_path / "again")
    assert all((steel / p).read_bytes() == (tmp_path / "again" / p).read_bytes() for p in _pngs(steel))
    assert first.read_bytes() != (tmp_path / "other" / "test" / "pitting" / "000.png").read_bytes()


@pytest.mark.parametrize("defect", ["crack", "dent", "stain", "missing_tooth"])
def test_a_part_defect_changes_the_part_where_its_mask_says(defect):
    seed = [7, 1]
    clean = np.asarray(draw_good_part("gear", np.random.default_rng(seed), 128)[0], np.float32)
    damaged, mask = draw_defective_part("gear", defect, np.random.default_rng(seed), 128)
    change = np.abs(np.asarray(damaged, np.float32) - clean).mean(axis=2)
    assert mask.sum() >= 4
    assert change[mask].mean() > 15  # visible where the mask is
    assert change[~mask].mean() < 0.5  # and (almost) nowhere else


@pytest.mark.parametrize("product", PART_PRODUCTS)
def test_good_parts_of_a_product_are_alike_but_turned(product):
    # A detector trained on good images can only find what good images do not show: every good
    # part of a product must be one design at one place and size (as at an inspection station).
    design = part_design(product, seed=3)
    drawn = [draw_good_part(product, np.random.default_rng([3, i]), 128, design=design) for i in range(6)]
    areas = np.array([mask.sum() for _, mask in drawn])
    centres = np.array([np.argwhere(mask).mean(axis=0) for _, mask in drawn])
    assert areas.max() / areas.min() < 1.15
    assert np.abs(centres - 64).max() < 6
    assert np.abs(np.asarray(drawn[0][0], float) - np.asarray(drawn[1][0], float)).mean() > 2  # not one picture
    # Another seed, another design: the same pose draws another part.
    again = draw_good_part(product, np.random.default_rng([3, 0]), 128, design=part_design(product, seed=4))
    assert np.abs(np.asarray(again[0], float) - np.asarray(drawn[0][0], float)).mean() > 5


def test_more_good_test_images_than_defective_ones_on_request(tmp_path):
    info = write_anomaly_parts(tmp_path, n=5, n_per_class=1, size=64, n_good_test=4)
    assert len(list((tmp_path / "gear" / "test" / "good").glob("*.png"))) == 4
    assert len(list((tmp_path / "gear" / "test" / "crack").glob("*.png"))) == 1
    assert info["counts"]["test"]["good"] == 12


def test_parts_set_has_one_product_folder_each_and_missing_teeth_only_on_gears(tmp_path):
    info = write_anomaly_parts(tmp_path, n=5, n_per_class=1, size=64)
    assert sorted(info["products"]) == sorted(PART_PRODUCTS)
    assert (tmp_path / "gear" / "test" / "missing_tooth").is_dir()
    assert not (tmp_path / "washer" / "test" / "missing_tooth").exists()
    assert len(list((tmp_path / "washer" / "train" / "good").glob("*.png"))) == 5
    assert info["counts"]["test"]["missing_tooth"] == 1


def test_cli_writes_anomaly_steel_and_overwrite_removes_stale_masks(tmp_path, capsys):
    out = tmp_path / "data"
    common = ["anomaly-steel", "--out", str(out), "--height", "32", "--width", "128", "--n", "5"]
    assert main([*common, "--n-per-class", "3"]) == 0
    assert "pitting" in capsys.readouterr().out
    assert main([*common, "--n-per-class", "1", "--overwrite"]) == 0
    assert len(list((out / "ground_truth" / "pitting").glob("*.png"))) == 2  # test 000 + validation val_000
    with pytest.raises(SystemExit):
        main(["anomaly-steel", "--out", str(tmp_path / "x"), "--n", "2"])
    assert "n=2" in capsys.readouterr().err


def test_parts_overwrite_leaves_no_stale_product_images(tmp_path):
    assert main(["anomaly-parts", "--out", str(tmp_path), "--size", "64", "--n", "6", "--n-per-class", "1"]) == 0
    assert main(["anomaly-parts", "--out", str(tmp_path), "--size", "64", "--n", "5", "--n-per-class", "1",
                 "--overwrite"]) == 0  # fmt: skip
    assert len(list((tmp_path / "gear" / "train" / "good").glob("*.png"))) == 5

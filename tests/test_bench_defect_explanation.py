"""bench/defect_explanation.py: defect heatmaps scored against the true defect masks."""

from __future__ import annotations

import json

import pytest

from bench import defect_explanation as bench
from datagen.steel import read_steel, write_steel
from pipelines.registry import PROJECT_MODELS_DIR

SEGMENTER = PROJECT_MODELS_DIR / "steel-segformer"


@pytest.fixture(scope="module")
def fresh_steel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steel")
    write_steel(folder, n=6, seed=7)
    return read_steel(folder)


def test_demo_segmenter_heatmaps_sit_on_the_defect(fresh_steel):
    report = bench.measure(SEGMENTER, fresh_steel, "gradcam", None)
    overall = report["overall"]
    assert report["explained_pairs"] >= 3, report
    # Far above chance (the defects' share of the image) and peaking on the defect.
    assert overall["energy_share_mean"] > 5 * overall["chance_mean"], overall
    assert overall["pointing_game_hit_rate"] >= 0.5, overall
    assert sum(s["n"] for s in report["per_class"].values()) == report["explained_pairs"]


def test_unknown_layer_is_refused_with_the_deepest_valid_ones(fresh_steel):
    with pytest.raises(ValueError, match="decode_head"):
        bench.measure(SEGMENTER, fresh_steel, "gradcam", "decode_head.nope")


def test_cli_without_a_model_reports_skipped(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--model", str(tmp_path / "none"), "--out", str(out)]) == 0
    assert "skipped" in json.loads(out.read_text())

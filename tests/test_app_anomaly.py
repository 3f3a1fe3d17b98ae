"""The Anomaly tab and its detectors: the demo detector on the example strips, the slider, errors and the log.

The examples are strips of the ``anomaly-steel`` test split (seed 0), named ``<kind>_<index>.png``;
each is drawn again here with its exact defect mask, so the map can be checked against the truth.
"""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import app
from common.checkpoints import ModelLoadError
from common.inspection_log import InspectionLog
from datagen import GENERATORS
from pipelines.anomaly_detection import AnomalyDetector
from pipelines.anomaly_detection.registry import DEMO_DETECTOR, AnomalyDetectors
from pipelines.registry import PROJECT_MODELS_DIR, ClassifierRegistry, ModelChoice
from ui import build_demo
from ui.anomaly import ANOMALY_EXAMPLES

DEMO = PROJECT_MODELS_DIR / DEMO_DETECTOR
EXAMPLES = sorted(ANOMALY_EXAMPLES.glob("*.png"))
DEFECTIVE = [path for path in EXAMPLES if not path.stem.startswith("good")]
GOOD = [path for path in EXAMPLES if path.stem.startswith("good")]
# How far the map's peak may lie outside the true defect: one cell of the stride-8 grid, in the
# image's pixels (at least 8), so a peak a patch away from a thin scratch still points at it. The
# demo's 320 x 160 input stretches a 128 x 800 strip's rows and squeezes its columns: a cell is 3.2
# rows by 40 columns of the strip.
STRIDE, PEAK_TOLERANCE = 8, 8


def peak_tolerance(input_size, image_shape) -> tuple[int, int]:
    """(rows, columns) of the image that one grid cell spans, at least ``PEAK_TOLERANCE`` each."""
    return tuple(max(PEAK_TOLERANCE, math.ceil(STRIDE * side / fed)) for side, fed in zip(image_shape, input_size))


def upload(path, name: str | None = None) -> dict:
    """What a raw ``gr.Image`` event receives for a browser upload."""
    return {"path": str(path), "orig_name": name or Path(path).name, "url": None}


def handler(demo: gr.Blocks, api_name: str):
    return next(function.fn for function in demo.fns.values() if function.api_name == api_name)


@pytest.fixture(scope="module")
def registry(tiny_vit_dir):
    return ClassifierRegistry([ModelChoice("tiny", str(tiny_vit_dir))], runtime="torch")


@pytest.fixture(scope="module")
def detectors():
    return AnomalyDetectors.from_sources()


@pytest.fixture(scope="module")
def demo(registry, detectors):
    return build_demo(registry, anomaly_detectors=detectors)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """The anomaly-steel test split the examples were taken from, drawn again with its masks."""
    root = tmp_path_factory.mktemp("anomaly-steel")
    count = 1 + max(int(path.stem.rsplit("_", 1)[1]) for path in EXAMPLES)
    GENERATORS["anomaly-steel"](root, seed=0, n=5, n_per_class=count)
    return root


def test_the_examples_and_the_demo_detector_are_there():
    assert len(GOOD) >= 2 and len(DEFECTIVE) >= 2, EXAMPLES
    assert AnomalyDetectors.from_sources().default == str(DEMO)
    assert sum(path.stat().st_size for path in DEMO.rglob("*") if path.is_file()) < 8 * 2**20


@pytest.mark.parametrize("example", DEFECTIVE, ids=lambda path: path.stem)
def test_a_defective_example_scores_above_the_line_and_its_map_peaks_on_the_defect(demo, detectors, truth, example):
    kind, index = example.stem.rsplit("_", 1)
    drawn = truth / "test" / kind / f"{index}.png"
    assert np.array_equal(np.asarray(Image.open(example)), np.asarray(Image.open(drawn)))  # the mask is its own
    mask = np.asarray(Image.open(truth / "ground_truth" / kind / f"{index}_mask.png")) > 127

    overlay, verdict, answer, last = handler(demo, "detect_anomaly")(upload(example), str(DEMO), 1.0, None)
    assert answer["anomalous"] is True and answer["score"] > 1.0, answer
    assert verdict.startswith(f"**Score {answer['score']:.2f} × threshold: anomalous.**")
    assert "Anomalous area:" in verdict and answer["area_fraction"] > 0
    heat = last["result"].anomaly_map
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    rows, columns = peak_tolerance(detectors.get(str(DEMO)).config.input_size, heat.shape)
    near_defect = ndimage.binary_dilation(mask, structure=np.ones((2 * rows + 1, 2 * columns + 1), bool))
    assert near_defect[peak], f"{example.name}: the map peaks at {peak}, away from the {kind}"
    assert overlay.size == Image.open(example).size


@pytest.mark.parametrize("example", GOOD, ids=lambda path: path.stem)
def test_a_good_example_scores_below_the_line(demo, example):
    _, verdict, answer, _ = handler(demo, "detect_anomaly")(upload(example), str(DEMO), 1.0, None)
    assert answer["anomalous"] is False and answer["score"] < 1.0, answer
    assert ": good.**" in verdict and "no pixel of the map is above the line" in verdict


def test_the_slider_rejudges_the_kept_result_without_running_the_network(demo, detectors, monkeypatch):
    detect, judge = handler(demo, "detect_anomaly"), handler(demo, "judge_anomaly")
    _, verdict, answer, last = detect(upload(DEFECTIVE[0]), str(DEMO), 1.0, None)
    held_out = detectors.get(str(DEMO)).held_out_scores()
    above = sum(score > last["result"].threshold for score in held_out)
    assert above / len(held_out) <= 0.01  # the fitted line keeps the demo's 1% target on its own scores
    fitted = (
        f"False-reject rate at 1.00 × threshold: {above / len(held_out):.1%} of the held-out good images ({above} of"
    )
    assert answer["anomalous"] and f"{fitted} {len(held_out)})" in verdict

    def no_network(*args, **kwargs):
        raise AssertionError("the slider must not run the network")

    monkeypatch.setattr(AnomalyDetector, "detect", no_network)
    line = round(answer["score"] + 0.05, 2)  # just above the score: the same image is now good
    overlay, verdict, moved = judge(last, line, str(DEMO), None)
    assert moved["anomalous"] is False and moved["threshold"] == line and moved["area_fraction"] == 0.0
    assert f"line moved to {line:.2f} × threshold): good.**" in verdict
    still = sum(score > line * last["result"].threshold for score in held_out)
    assert still <= above and f"False-reject rate at {line:.2f} × threshold: {still / len(held_out):.1%}" in verdict
    # A line far below the fitted one rejects good images too, and the sentence counts them.
    _, verdict, loose = judge(last, 0.5, str(DEMO), None)
    rejected = sum(score > 0.5 * last["result"].threshold for score in held_out)
    assert (
        loose["anomalous"]
        and rejected > 0
        and loose["held_out_false_reject_rate"] == pytest.approx(rejected / len(held_out), abs=1e-4)
    )
    assert f"({rejected} of {len(held_out)}) would be called anomalous" in verdict
    assert loose["area_fraction"] > answer["area_fraction"]  # a lower line outlines more
    # Before any detection the slider still says what the line costs.
    _, verdict, empty = judge(None, 2.0, str(DEMO), None)
    assert empty == {} and "Detect an image first" in verdict and "False-reject rate at 2.00" in verdict


def test_a_bad_upload_gets_a_clear_error(demo, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("meeting notes, not a picture")
    with pytest.raises(gr.Error, match="Cannot read image 'notes.png'.*not a recognised image format"):
        handler(demo, "detect_anomaly")(upload(notes), str(DEMO), 1.0, None)
    with pytest.raises(gr.Error, match="No image yet"):
        handler(demo, "detect_anomaly")(None, str(DEMO), 1.0, None)
    with pytest.raises(gr.Error, match="Unknown anomaly detector 'models/nothing'. Available: "):
        handler(demo, "detect_anomaly")(upload(GOOD[0]), "models/nothing", 1.0, None)
    with pytest.raises(gr.Error, match="Product: product 'bolts' is not one of this detector's: steel"):
        handler(demo, "detect_anomaly")(upload(GOOD[0]), str(DEMO), 1.0, "bolts")


def test_without_a_detector_the_tab_says_how_to_train_one(registry):
    demo = build_demo(registry, anomaly_detectors=AnomalyDetectors())
    with pytest.raises(gr.Error, match="No anomaly detector is available.*python -m train.anomaly_detection"):
        handler(demo, "detect_anomaly")(upload(GOOD[0]), None, 1.0, None)
    notes = [block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "anomaly-missing"]
    assert notes and "python -m train.anomaly_detection --train_dir" in notes[0]


def test_a_detection_is_logged_at_the_sliders_line(registry, detectors, tmp_path):
    log = InspectionLog.open(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        demo = build_demo(registry, inspection_log=log, anomaly_detectors=detectors)
        _, verdict, answer, last = handler(demo, "detect_anomaly")(
            upload(DEFECTIVE[0], "strip 7.png"), None, 1.25, None
        )
        row = log.list()[0]
        assert verdict.endswith(f"Logged as inspection #{row.id}.") and answer["inspection_id"] == row.id
        assert row.task == "anomaly" and row.channel == "anomaly" and row.file_name == "strip 7.png"
        assert answer["score"] > 1.25 and row.answer == "anomalous" and row.flags == ("defective",)
        assert row.thresholds["threshold"] == 1.25 and row.scores["score"] == pytest.approx(answer["score"], abs=1e-4)
        assert row.model_source == str(DEMO) and len(row.model_fingerprint) == 64
        _, verdict, _ = handler(demo, "judge_anomaly")(last, 1.0, None, None)
        assert "The log keeps the verdict at 1.25 × threshold" in verdict and len(log.list()) == 1  # no new row
    finally:
        log.close()


def test_the_api_answers_json_with_the_default_threshold(demo):
    from gradio_client import Client, handle_file

    demo.queue()
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        overlay, verdict, answer = client.predict(handle_file(str(DEFECTIVE[0])), str(DEMO), api_name="/detect_anomaly")
    finally:
        demo.close()
    assert Path(overlay).is_file() and "anomalous" in verdict
    assert answer["threshold"] == 1.0 and answer["anomalous"] is True and answer["product"] == "steel"


# --- the detectors on offer -------------------------------------------------------------------


def test_detectors_are_the_demo_then_the_flags_each_loaded_once(tmp_path, monkeypatch):
    extra = tmp_path / "mine"
    offered = AnomalyDetectors.from_sources([extra, DEMO])  # the demo given again is offered once
    assert [choice.source for choice in offered.choices] == [str(DEMO), str(extra)]
    assert [choice.label for choice in offered.choices] == [DEMO_DETECTOR, "mine"]
    with pytest.raises(ModelLoadError, match="'.*mine' is not a folder. Give --anomaly-model the folder"):
        offered.check()
    extra.mkdir()
    with pytest.raises(ModelLoadError, match="has no anomaly.json, so it is not an anomaly detector"):
        offered.get(str(extra))
    assert AnomalyDetectors.from_sources(models_dir=tmp_path).choices == []  # no demo there

    loads = []
    real = AnomalyDetector.from_pretrained

    def counted(directory, runtime="auto"):
        loads.append((directory, runtime))
        return real(directory, runtime=runtime)

    monkeypatch.setattr(AnomalyDetector, "from_pretrained", counted)
    fresh = AnomalyDetectors.from_sources()
    assert fresh.products() == ["steel"] and loads == []  # the products come from anomaly.json alone
    got = []
    threads = [threading.Thread(target=lambda: got.append(fresh.get())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len({id(detector) for detector in got}) == 1


def test_the_app_takes_repeatable_anomaly_models():
    args = app.parse_args(["--anomaly-model", "a", "--anomaly-model", "b"])
    assert args.anomaly_model == ["a", "b"]
    assert app.parse_args([]).anomaly_model == []


def test_inspect_finds_the_anomalous_examples_in_a_zip_and_logs_each(registry, detectors, tmp_path):
    from tests.conftest import write_zip
    from ui.common import TabContext
    from ui.inspect import ANOMALY_COLUMNS, FIND_ANOMALIES, inspect_uploads

    members = {f"strips/{path.name}": path.read_bytes() for path in EXAMPLES}
    members["strips/notes.png"] = b"not an image"
    archive = write_zip(tmp_path / "strips.zip", members)
    log = InspectionLog.open(f"sqlite:///{tmp_path / 'log.db'}")
    with gr.Blocks() as page:
        context = TabContext(registry, app.LazySegmenter(None), page, inspection_log=log, anomaly_detectors=detectors)
        result = inspect_uploads(context, [str(archive)], FIND_ANOMALIES, None, 0.5, 4, detector=str(DEMO))
        table = result.table.set_index("file")
        assert list(result.table.columns) == ANOMALY_COLUMNS
        for path in DEFECTIVE:
            assert table.loc[f"strips.zip/strips/{path.name}", "answer"] == "anomalous", table
        for path in GOOD:
            assert table.loc[f"strips.zip/strips/{path.name}", "answer"] == "good", table
        assert table.loc["strips.zip/strips/notes.png", "flagged"] == "unreadable"
        assert len(result.gallery) >= len(DEFECTIVE)  # each anomalous strip with its map
        csv_rows = Path(result.downloads[0]).read_text().splitlines()
        assert len(csv_rows) == 1 + len(EXAMPLES) + 1  # header, every strip, the unreadable file
        # Every scored strip is a decision in the log, under task "anomaly"; the unreadable file is none.
        logged = log.list(task="anomaly")
        assert sorted(row.answer for row in logged) == sorted(["anomalous"] * len(DEFECTIVE) + ["good"] * len(GOOD))


def test_prepare_loads_the_demo_detector_with_the_other_models(tmp_path, capsys):
    from pipelines import prepare

    models = tmp_path / "models"
    shutil.copytree(DEMO, models / DEMO_DETECTOR)
    assert prepare.main(["--models-dir", str(models), "--runtime", "torch"]) == 0
    served = capsys.readouterr().out
    assert f"{models / DEMO_DETECTOR}: served by torch" in served and "default: served by torch" in served

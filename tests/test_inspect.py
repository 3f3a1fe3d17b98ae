"""The Inspect tab's handlers on tiny models, and both command lines on zip archives."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from common.rle import rle_decode
from pipelines.registry import ClassifierRegistry, LazySegmenter, ModelChoice
from tests.conftest import TINY_LABELS, noise_png_bytes, write_zip
from ui import inspect
from ui.common import TabContext

DEFECTS = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}


def _corrupt_member(path, name: str) -> None:
    """Flip a byte inside a stored member's data, so its CRC-32 no longer matches."""
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo(name)
    data[info.header_offset + 30 + len(name) + 60] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def scratches_dir(tmp_path_factory):
    """A tiny SegFormer whose head answers 'scratches' everywhere, whatever the image."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from tests.conftest import tiny_segformer_config

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("scratches-segformer")
    model = SegformerForSemanticSegmentation(tiny_segformer_config(DEFECTS))
    with torch.no_grad():
        model.decode_head.classifier.bias[:] = torch.tensor([0.0, 0, 0, 20, 0])
    model.save_pretrained(directory)
    SegformerImageProcessor(do_resize=False).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def context(tiny_vit_dir, scratches_dir):
    registry = ClassifierRegistry([ModelChoice("tiny", str(tiny_vit_dir))], runtime="torch")
    return TabContext(registry, LazySegmenter(scratches_dir, runtime="torch"), demo=None, max_file_bytes=2**20)


@pytest.fixture
def batch_zip(tmp_path):
    members = {
        "top.png": noise_png_bytes(0, (40, 30)),
        "gears/g1.png": noise_png_bytes(1, (40, 30)),
        "gears/deep/g2.png": noise_png_bytes(2, (40, 30)),
        "nuts/n1.png": noise_png_bytes(3, (40, 30)),
    }
    return write_zip(tmp_path / "batch.zip", members)


def _classify(context, uploads, min_confidence=0.0, batch_size=2):
    return inspect.inspect_uploads(context, [str(p) for p in uploads], "classify", context.registry.default,
                                   min_confidence, batch_size)  # fmt: skip


def test_a_zip_of_images_gives_one_row_each(context, batch_zip, tmp_path):
    loose = tmp_path / "loose.jpg"
    Image.open(io.BytesIO(noise_png_bytes(9, (40, 30)))).save(loose)
    calls = []
    result = inspect.inspect_uploads(
        context, [str(batch_zip), str(loose)], "classify", context.registry.default, 0.0, 2,
        lambda done_total, **_: calls.append(done_total),
    )  # fmt: skip
    names = ["batch.zip/top.png", "batch.zip/gears/g1.png", "batch.zip/gears/deep/g2.png", "batch.zip/nuts/n1.png"]
    assert list(result.table["file"]) == [*names, "loose.jpg"]
    assert set(result.table["answer"]) <= set(TINY_LABELS.values())
    assert result.table["confidence"].between(0, 1).all() and not result.table["error"].any()
    assert calls == [(2, 5), (4, 5), (5, 5)]  # once per batch of 2
    assert result.counts["images"].sum() == 5 and result.counts["share %"].sum() == pytest.approx(100, abs=0.2)
    assert "Inspected **5** image(s)" in result.summary and "not calibrated" in result.summary
    assert result.gallery == []  # nothing below 0% and nothing unknown
    csv_path, json_path = result.downloads
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["path"] for r in rows] == [*names, "loose.jpg"]
    assert all(r["label_1"] in TINY_LABELS.values() and r["flagged"] == "false" for r in rows)
    records = json.loads(open(json_path).read())
    assert [r["file"] for r in records] == [*names, "loose.jpg"] and len(records[0]["predictions"]) == 3
    assert [r["label"] for r in records] == [r["label_1"] for r in rows]


def test_an_unreadable_member_gives_a_row_with_its_reason(context, tmp_path):
    members = {
        "a.png": noise_png_bytes(0, (40, 30)),
        "b.png": noise_png_bytes(1, (40, 30)),
        "notes.png": b"meeting notes, not a picture",
        "c.png": noise_png_bytes(2, (40, 30)),
    }
    batch = write_zip(tmp_path / "batch.zip", members, compression=zipfile.ZIP_STORED)
    _corrupt_member(batch, "b.png")
    result = _classify(context, [batch])
    rows = {row.file: row for row in result.table.itertuples()}
    assert list(rows) == ["batch.zip/a.png", "batch.zip/b.png", "batch.zip/notes.png", "batch.zip/c.png"]
    assert rows["batch.zip/b.png"].error.startswith("its data is corrupt (Bad CRC-32")
    assert "not a recognised image format" in rows["batch.zip/notes.png"].error
    assert "vispect-batch" not in rows["batch.zip/notes.png"].error  # never the server's temp folder
    assert rows["batch.zip/a.png"].answer in TINY_LABELS.values() and not rows["batch.zip/c.png"].error
    assert {rows[n].flagged for n in ("batch.zip/b.png", "batch.zip/notes.png")} == {"unreadable"}
    assert dict(zip(result.counts["answer"], result.counts["images"]))["unreadable"] == 2
    records = json.loads(open(result.downloads[1]).read())
    assert "Cannot read image 'batch.zip/notes.png'" in records[2]["error"] and records[2]["flagged"] is True


def test_the_slider_flags_rows_below_it(context, batch_zip):
    relaxed = _classify(context, [batch_zip], min_confidence=0.0)
    strict = _classify(context, [batch_zip], min_confidence=0.99)  # a random 3-class model is never this sure
    assert not relaxed.table["flagged"].any() and relaxed.gallery == []
    assert list(strict.table["flagged"]) == ["below 99%"] * 4
    assert len(strict.gallery) == 4 and "4** flagged" in strict.summary
    image, caption = strict.gallery[1]
    assert caption.startswith("batch.zip/gears/g1.png: ") and caption.endswith("(below 99%)")
    assert Image.open(image).size == (40, 30)
    scores = [record["score"] for record in json.loads(open(strict.downloads[1]).read())]  # unrounded
    middle = sorted(scores)[1]
    some = _classify(context, [batch_zip], min_confidence=middle)
    assert (
        list(some.table["flagged"].astype(bool))
        == [score < middle for score in scores]
        == [record["flagged"] for record in json.loads(open(some.downloads[1]).read())]
    )
    assert sum(bool(flag) for flag in some.table["flagged"]) == 1 and len(some.gallery) == 1


def test_segmentation_rows_have_defect_areas_and_a_readable_rle_csv(context, tmp_path):
    strips = {
        "s1.png": noise_png_bytes(0, (96, 32)),
        "sub/s2.png": noise_png_bytes(1, (64, 32)),
        "broken.png": b"\x89PNG\r\n\x1a\n cut",
    }
    batch = write_zip(tmp_path / "strips.zip", strips)
    result = inspect.inspect_uploads(context, [str(batch)], "find defects", None, 0.5, 2)
    table = {row.file: row for row in result.table.itertuples()}
    s1 = table["strips.zip/s1.png"]
    assert (s1.answer, s1.defective, s1.flagged) == ("defective", "yes", "defective")
    assert result.table.columns[4] == "defect types (area %)" and s1[5] == "scratches 100.00%"
    assert "truncated or corrupt" in table["strips.zip/broken.png"].error
    assert dict(zip(result.counts["defect type"], result.counts["images with it"])) == {"scratches": 2, "unreadable": 1}
    assert len(result.gallery) == 2 and result.gallery[0][1] == "strips.zip/s1.png: scratches 100.00% (defective)"
    overlay = np.asarray(Image.open(result.gallery[0][0]))
    assert overlay.shape == (32, 96, 3)
    csv_path, json_path, rle_path = result.downloads
    rle_rows = list(csv.reader(open(rle_path)))
    assert rle_rows[0] == ["ImageId", "EncodedPixels", "ClassId"]
    assert [(r[0], r[2]) for r in rle_rows[1:]] == [(i, str(c)) for i in ("s1.png", "s2.png") for c in range(1, 5)]
    sizes = {"s1.png": (32, 96), "s2.png": (32, 64)}
    for image_id, rle, class_id in rle_rows[1:]:
        mask = rle_decode(rle, sizes[image_id])
        assert mask.all() if class_id == "3" else not mask.any()
    records = json.loads(open(json_path).read())
    assert records[0]["defects"]["scratches"]["pixels"] == 32 * 96 and records[0]["defective"] is True
    assert records[2]["defective"] is None and "broken.png" in records[2]["error"]
    rows = list(csv.DictReader(open(csv_path)))
    assert float(rows[1]["scratches_area_fraction"]) == 1.0 and rows[1]["pitting_pixels"] == "0"
    assert rows[2]["error"] and rows[2]["flagged"] == "true"


def test_the_upload_caps_and_a_refused_archive_are_clear_errors(context, batch_zip, tmp_path, monkeypatch):
    big = tmp_path / "huge.png"
    big.write_bytes(bytes(2**20 + 1))
    with pytest.raises(gr.Error, match=r"'huge.png' is 1.0 MB, over the 1.0 MB limit per file"):
        _classify(context, [big])
    slip = write_zip(tmp_path / "slip.zip", {"../evil.png": noise_png_bytes(0, (40, 30))})
    with pytest.raises(gr.Error, match="'slip.zip' has a member whose path goes up a folder"):
        _classify(context, [slip])
    with pytest.raises(gr.Error, match="No images yet"):
        _classify(context, [])
    monkeypatch.setattr(inspect, "MAX_IMAGES_PER_BATCH", 3)
    with pytest.raises(gr.Error, match="holds 4 images, over the limit of 3 per run"):
        _classify(context, [batch_zip])


def test_the_tab_is_an_api_endpoint(context, batch_zip, tiny_vit_dir, scratches_dir):
    from gradio_client import Client, handle_file

    from ui import build_demo

    demo = build_demo(context.registry, context.segmenter)
    demo.queue()
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        summary, table, gallery, counts, files = client.predict(
            [handle_file(str(batch_zip))], "classify", str(tiny_vit_dir), 0.99, 4, api_name="/inspect"
        )
    finally:
        demo.close()
    assert table["headers"] == inspect.CLASSIFY_COLUMNS and len(table["data"]) == 4
    assert len(gallery) == 4 and "4** flagged" in summary
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["inspection.csv", "inspection.json"]


def test_classification_cli_reads_zips_and_names_members(tiny_vit_dir, tmp_path, capsys):
    from pipelines.classification.cli import main

    members = {name: noise_png_bytes(seed, (40, 30)) for seed, name in enumerate(["a.png", "sub/b.png", "c.png"])}
    batch = write_zip(tmp_path / "batch.zip", members, compression=zipfile.ZIP_STORED)
    _corrupt_member(batch, "sub/b.png")
    out = tmp_path / "predictions.csv"
    assert main([str(batch), "--model", str(tiny_vit_dir), "--batch-size", "2", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [f"{batch}/a.png", f"{batch}/sub/b.png", f"{batch}/c.png"]
    assert rows[1]["label_1"] == "" and "Bad CRC-32" in rows[1]["error"] and rows[0]["label_1"]
    assert "classified 2 image(s), skipped 1" in capsys.readouterr().err
    slip = write_zip(tmp_path / "slip.zip", {"/etc/evil.png": noise_png_bytes(0, (40, 30))})
    with pytest.raises(SystemExit) as exit_info:
        main([str(slip), "--model", str(tiny_vit_dir)])
    assert exit_info.value.code == 2 and "absolute path, '/etc/evil.png'" in capsys.readouterr().err


def test_segmentation_cli_reads_zips_in_batches_with_a_report(scratches_dir, tmp_path, capsys):
    from pipelines.segmentation.cli import main

    strips = {"s1.png": noise_png_bytes(0, (96, 32)), "s2.png": noise_png_bytes(1, (64, 32)), "s3.png": b"not an image"}
    batch = write_zip(tmp_path / "strips.zip", strips)
    out, report = tmp_path / "submission.csv", tmp_path / "report.csv"
    options = ["--csv", str(out), "--report", str(report), "--batch-size", "2", "--no-progress"]
    assert main([str(batch), "--model", str(scratches_dir), *options]) == 0
    rows = list(csv.reader(out.open()))
    assert [(r[0], r[2]) for r in rows[1:]] == [(i, str(c)) for i in ("s1.png", "s2.png") for c in range(1, 5)]
    details = list(csv.DictReader(report.open()))
    assert [d["file"] for d in details] == [f"{batch}/s{i}.png" for i in (1, 2, 3)]
    assert details[0]["defective"] == "true" and float(details[0]["scratches_area_fraction"]) == 1.0
    assert "not a recognised image format" in details[2]["error"] and details[2]["defective"] == ""
    assert "skipped 1 unreadable" in capsys.readouterr().err
    twice = write_zip(
        tmp_path / "twice.zip", {"a/s.png": noise_png_bytes(0, (64, 32)), "b/s.png": noise_png_bytes(1, (64, 32))}
    )
    with pytest.raises(SystemExit):
        main([str(twice), "--model", str(scratches_dir), "--csv", str(out)])
    assert "Two images would share the ImageId 's.png'" in capsys.readouterr().err


@pytest.mark.skipif(not inspect.EXAMPLE_BATCH.is_file(), reason="examples/inspect/parts-and-others.zip not made yet")
def test_the_example_batch_reads_cleanly(context):
    result = inspect.inspect_uploads(context, [str(inspect.EXAMPLE_BATCH)], "classify", None, 0.0, 8)
    with zipfile.ZipFile(inspect.EXAMPLE_BATCH) as archive:
        images = [name for name in archive.namelist() if not name.endswith("/")]
    assert list(result.table["file"]) == [f"parts-and-others.zip/{name}" for name in images]
    assert not result.table["error"].any()

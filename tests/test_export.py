"""train.export --format safetensors (the default): a float16 copy that the pipelines load and that answers the same."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pipelines.classification import ImageClassifier
from train.export import ExportError, export, main


def test_export_halves_the_weights_and_keeps_the_answers(tiny_resnet_dir, photo_file, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(tiny_resnet_dir, source)
    (source / "README.md").write_text("# tiny\n")
    (source / "training_args.bin").write_bytes(b"not shipped")
    (source / "checkpoint-10").mkdir()
    out = tmp_path / "shipped"

    assert main([str(source), str(out), "--dtype", "float16"]) == 0  # the README's command

    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert any(not t.is_floating_point() for t in weights.values())  # BatchNorm step counters stay int64
    original = load_file(source / "model.safetensors")
    float_bytes = [sum(t.nbytes for t in w.values() if t.is_floating_point()) for w in (original, weights)]
    assert float_bytes[1] * 2 == float_bytes[0]
    assert weights.keys() == original.keys()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert not (out / "training_args.bin").exists() and not (out / "checkpoint-10").exists()
    assert "python -m train.export" in (out / "README.md").read_text()

    before = ImageClassifier.from_pretrained(source).classify(photo_file, top_k=3).predictions
    after = ImageClassifier.from_pretrained(out).classify(photo_file, top_k=3).predictions
    assert [p.label for p in after] == [p.label for p in before]
    assert [p.score for p in after] == pytest.approx([p.score for p in before], abs=1e-2)


def test_export_refuses_to_overwrite_and_names_the_flag(tiny_resnet_dir, tmp_path, capsys):
    out = tmp_path / "shipped"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([str(tiny_resnet_dir), str(out)])
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"  # nothing already saved is lost
    assert main([str(tiny_resnet_dir), str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()


def test_export_of_a_directory_without_safetensors_says_what_it_needs(tmp_path):
    with pytest.raises(ExportError, match="no model.safetensors"):
        export(tmp_path, tmp_path / "out")


def test_a_failed_write_keeps_the_previous_export_and_leaves_no_staging(tiny_resnet_dir, tmp_path, monkeypatch):
    from train.export import fp16

    out = tmp_path / "shipped"
    assert main([str(tiny_resnet_dir), str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fp16, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        main([str(tiny_resnet_dir), str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["shipped"]  # no .partial folder beside it


def test_onnx_flags_without_format_onnx_are_refused_by_name(tiny_resnet_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tiny_resnet_dir), str(tmp_path / "out"), "--quantize", "int8"])
    assert "--quantize need --format onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tiny_resnet_dir), str(tmp_path / "out"), "--format", "onnx", "--dtype", "float16"])
    assert "--dtype is for --format safetensors" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

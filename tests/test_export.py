"""train.export: a float16 copy of a checkpoint that the pipelines load and that answers the same."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pipelines.classification import ImageClassifier
from train.export import ExportError, main


def test_export_halves_the_weights_and_keeps_the_answers(tiny_resnet_dir, photo_file, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(tiny_resnet_dir, source)
    (source / "README.md").write_text("# tiny\n")
    (source / "training_args.bin").write_bytes(b"not shipped")
    (source / "checkpoint-10").mkdir()
    out = tmp_path / "shipped"

    assert main([str(source), str(out)]) == 0

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
        from train.export import export

        export(tmp_path, tmp_path / "out")

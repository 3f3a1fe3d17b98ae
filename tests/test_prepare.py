"""python -m pipelines.prepare: every model the app offers loaded once, before serving."""

from __future__ import annotations

import shutil

from pipelines.prepare import main, prepare
from pipelines.registry import ClassifierRegistry, LazySegmenter


def test_prepare_loads_every_classifier_and_says_what_serves_it(tiny_vit_dir, tiny_vit_onnx_dir):
    registry = ClassifierRegistry.from_sources([str(tiny_vit_dir), str(tiny_vit_onnx_dir)], models_dir=None)
    loaded = prepare(registry, LazySegmenter(None))
    runtimes = {source: runtime for source, runtime, _ in loaded}
    assert runtimes == {"default": "onnx", str(tiny_vit_dir): "torch", str(tiny_vit_onnx_dir): "onnx"}
    # Loaded into the registry itself: the app's first request finds them ready.
    assert registry.get(str(tiny_vit_dir)) is registry.get(str(tiny_vit_dir))


def test_prepare_fails_with_the_broken_model_named(tiny_vit_dir, tmp_path, capsys):
    models = tmp_path / "models"
    broken = models / "broken"
    shutil.copytree(tiny_vit_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    assert main(["--models-dir", str(models), "--runtime", "torch"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bars of the models loaded first
    assert error.startswith("error: Cannot load model from") and "broken" in error and "damaged" in error


def test_prepare_prints_one_line_per_model(tiny_vit_dir, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_vit_dir, models / "tiny")
    assert main(["--models-dir", str(models), "--runtime", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": served by ")[1].split()[0] for line in lines] == ["torch", "torch"]
    assert lines[0].startswith("default: ") and lines[1].startswith(f"{models / 'tiny'}: ")

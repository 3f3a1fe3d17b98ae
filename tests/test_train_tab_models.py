"""Models trained in the Train tab join the app's other tabs: a segmenter job serves the Segment tab.

The job is a real ``python -m train.segmentation.train`` process on a tiny SegFormer and generated
steel (Kaggle layout, zipped as a user would), wired the way ``app.py`` wires it; the new model is
then used through the Segment tab's own endpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import app
from datagen.steel import write_steel
from jobs.commands import SEGMENTER, Recipe
from jobs.service import DataSource
from jobs.store import FINISHED, JobError
from pipelines.classification import ImageClassifier
from pipelines.registry import ClassifierRegistry, LazySegmenter, SegmenterRegistry
from tests.conftest import tiny_segformer_config, write_colour_folders, zip_folder
from tests.test_jobs import ended, wait_for
from ui import build_demo

pytestmark = pytest.mark.slow
ID2LABEL = {0: "background", 1: "pitting", 2: "crazing", 3: "scratches", 4: "patches"}


@pytest.fixture(scope="module")
def steel_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("steel-zip")
    data = root / "steel"
    write_steel(data, n=24, seed=3, height=64, width=320)
    return zip_folder(data, root / "steel.zip")


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory) -> Path:
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-segformer")
    SegformerForSemanticSegmentation(tiny_segformer_config(ID2LABEL)).save_pretrained(directory)
    SegformerImageProcessor(do_resize=False).save_pretrained(directory)
    return directory


def test_segmenter_registry_offers_the_configured_pair_first_and_takes_trained_ones(tiny_segformer):
    segmenters = SegmenterRegistry(LazySegmenter(None))
    assert [choice.label for choice in segmenters.choices] == ["none configured"]
    segmenters.add("job-1: trained on steel.zip", tiny_segformer)
    # With nothing configured, the first trained segmenter becomes the default rather than a second entry.
    assert [choice.source for choice in segmenters.choices] == [str(tiny_segformer)]
    assert segmenters.labels() == ID2LABEL
    segmenters.add("again", tiny_segformer)
    assert len(segmenters.choices) == 1  # a source already offered is kept as is
    with pytest.raises(Exception, match="Unknown segmenter 'elsewhere'"):
        segmenters.get("elsewhere")


def test_a_finished_segmenter_job_serves_the_segment_tab_without_a_restart(tmp_path, steel_zip, tiny_segformer):
    from gradio_client import Client, handle_file

    cli = app.parse_args(["--jobs-dir", str(tmp_path / "jobs"), "--log-db", "off"])
    registry = ClassifierRegistry.from_sources()
    segmenters = SegmenterRegistry(LazySegmenter.from_models_dir())
    training = app.open_training_jobs(cli, registry, None, segmenters)
    demo = build_demo(registry, segmenters, training=training)
    demo.queue().launch(prevent_thread_lock=True, quiet=True)
    try:
        recipe = Recipe(
            task=SEGMENTER,
            base_model=str(tiny_segformer),
            epochs=1,
            image_size="32x160",
            advanced="--max_steps 2 --crop_size 32x160 --per_device_train_batch_size 4",
        )
        job = training.start(DataSource(value=str(steel_zip)), recipe)
        status = wait_for(training, job.id, ended)
        assert status["state"] == FINISHED, status
        model = status["model"]
        # The demo pair stays first (the default); the job's model is offered after it.
        assert [choice.source for choice in segmenters.choices][1:] == [model]
        assert training.manager.store.model_dir(job.id) == Path(model)

        client = Client(demo.local_url, verbose=False)
        strip = sorted((tmp_path / "jobs").rglob("train_images/*.jpg"))[0]
        annotated, table, verdict, files = client.predict(handle_file(str(strip)), 0, model, api_name="/segment")
        assert [row[0] for row in table["data"]] == list(ID2LABEL.values())[1:]  # the job model's four classes
        assert verdict.startswith(("**Defective**", "**Clean**"))
        # The demo pair has a stage 1; a segmenter trained in the tab has none, so the verdict says nothing of it.
        assert "Stage 1" not in verdict

        # Export for CPU: the ONNX copy joins the segmenter list and outlines the strip as PyTorch does.
        exported = wait_for(training, training.export(job.id).id, ended)
        assert exported["state"] == FINISHED, (exported, training.manager.log_lines(exported["job_id"], 30))
        assert segmenters.choices[-1].source == exported["model"]
        assert segmenters.get(exported["model"]).runtime == "onnx"
        _, onnx_table, onnx_verdict, _ = client.predict(
            handle_file(str(strip)), 0, exported["model"], api_name="/segment"
        )
        assert onnx_verdict == verdict
        assert [row[:2] for row in onnx_table["data"]] == [row[:2] for row in table["data"]]  # class and area
    finally:
        demo.close()
        training.manager.close()


def test_export_for_cpu_writes_an_onnx_copy_that_answers_as_the_trained_model(tmp_path, tiny_vit_dir):
    from tests.test_jobs import _recipe

    data = write_colour_folders(tmp_path / "colours", per_split={"train": 8, "validation": 4, "test": 4})
    archive = zip_folder(data, tmp_path / "colours.zip")
    cli = app.parse_args(["--jobs-dir", str(tmp_path / "jobs"), "--log-db", "off"])
    registry = ClassifierRegistry.from_sources(models_dir=None)
    training = app.open_training_jobs(cli, registry, None, SegmenterRegistry(LazySegmenter(None)))
    try:
        trained = training.start(DataSource(value=str(archive)), _recipe(tiny_vit_dir, epochs=3))
        with pytest.raises(JobError, match="has not finished, so there is no model to export yet"):
            training.export(trained.id)
        assert wait_for(training, trained.id, ended)["state"] == FINISHED

        exported = training.export(trained.id)
        status = wait_for(training, exported.id, ended)
        assert status["state"] == FINISHED, (status, training.manager.log_lines(exported.id, 30))
        assert status["command"].startswith(f"python -m train.export {training.manager.store.model_dir(trained.id)} ")
        assert "--eval_dir" in status["command"]  # checked on the job's own test images
        # The export joins the classifier list, and ONNX Runtime serves it with the trained model's answers.
        assert [choice.source for choice in registry.choices][-2:] == [
            str(training.manager.store.model_dir(trained.id)),
            status["model"],
        ]
        onnx = ImageClassifier.from_pretrained(status["model"], runtime="onnx")
        eager = registry.get(str(training.manager.store.model_dir(trained.id)))
        images = sorted(Path(data, "test").rglob("*.png"))
        assert len(images) == 12  # 4 per class
        for image in images:
            assert onnx.classify(image).predictions[0].label == eager.classify(image).predictions[0].label
        with pytest.raises(JobError, match="is already an export"):
            training.export(exported.id)
    finally:
        training.manager.close()

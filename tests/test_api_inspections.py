"""The inspection log behind the REST API, on SQLite and PostgreSQL: every answer recorded, listed and reviewed.

A real server (``app.launch_app``, as app.py serves) per database, with an API key; a bare FastAPI
app over the router where a test breaks its log; ``python app.py`` itself for a database that is down.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

import app
from api import create_api_router
from api.routes import ApiLimits
from bench.common import free_port
from common.inspection_log import InspectionLog
from pipelines.examples import example_photos
from pipelines.registry import ClassifierRegistry, LazySegmenter
from tests.inspection_databases import DATABASES, database_url
from ui import build_demo

ROOT = Path(__file__).resolve().parents[1]
STEEL = ROOT / "examples" / "steel" / "steel_1.jpg"
KEY = "correct-horse-battery-staple"
COFFEE = next(path for path in example_photos() if path.name == "coffee.png")


def noise_png(seed: int = 0) -> bytes:
    """Random pixels: the default ImageNet model's top score for seed 0 is about 14%, so it is flagged."""
    pixels = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registry():
    return ClassifierRegistry.from_sources()


@pytest.fixture(scope="module")
def segmenter():
    return LazySegmenter.from_models_dir()


@pytest.fixture(scope="module", params=DATABASES)
def server(request, registry, segmenter, tmp_path_factory):
    """(client with the key, client without, the log) of a server that logs to a fresh database."""
    folder = tmp_path_factory.mktemp(f"rest-log-{request.param}")
    with database_url(request.param, folder) as url:
        log = InspectionLog.open(url, store_dir=folder / "store", store_images=True)
        args = app.parse_args(["--port", str(free_port()), "--api-key", KEY])
        demo = build_demo(registry, segmenter, inspection_log=log)
        limits = ApiLimits(concurrency=args.concurrency)
        rest_api = create_api_router(registry, segmenter, limits, KEY, inspection_log=log)
        app.launch_app(demo, args, prevent_thread_lock=True, rest_api=rest_api)
        base_url = demo.local_url.rstrip("/")
        try:
            with (
                httpx.Client(base_url=base_url, timeout=300, headers={"X-API-Key": KEY}) as keyed,
                httpx.Client(base_url=base_url, timeout=300) as anonymous,
            ):
                yield keyed, anonymous, log
        finally:
            demo.close()
            log.close()


def classify(client, data: bytes, name: str = "photo.png", **fields):
    return client.post("/api/v1/classify", files={"file": (name, data)}, data=fields)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_sixteen_concurrent_classify_requests_make_sixteen_rows(server):
    client, _, log = server
    before = {item.id for item in log.list(limit=500)}
    data = COFFEE.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda i: classify(client, data, f"coffee-{i}.png"), range(16)))
    assert [response.status_code for response in responses] == [200] * 16, responses[0].text
    returned = [response.json()["inspection_id"] for response in responses]
    assert all(isinstance(number, int) for number in returned) and len(set(returned)) == 16
    rows = [item for item in log.list(limit=500) if item.id not in before]
    assert sorted(item.id for item in rows) == sorted(returned)  # none lost, none doubled
    by_id = {item.id: item for item in rows}
    for index, response in enumerate(responses):
        body = response.json()
        row = by_id[body["inspection_id"]]
        assert row.file_name == f"coffee-{index}.png" and row.channel == "api" and row.task == "classify"
        assert row.answer == body["predictions"][0]["label"] and row.image_sha256 == body["image"]["sha256"]
        # One fingerprint: the answer's and the log's are the same string.
        assert row.model_fingerprint == body["model"]["fingerprint"] and len(row.model_fingerprint) == 64
        assert row.image_stored


def test_list_filter_and_get_the_logged_decisions(server):
    client, _, _ = server
    started = datetime.now(UTC) - timedelta(seconds=1)
    sure = classify(client, COFFEE.read_bytes(), "coffee.png").json()["inspection_id"]
    unsure = classify(client, noise_png(), "noise.png").json()["inspection_id"]

    listing = client.get("/api/v1/inspections", params={"limit": 2}).json()
    assert listing["limit"] == 2 and listing["offset"] == 0
    assert [item["id"] for item in listing["inspections"]] == [unsure, sure]  # newest first
    assert client.get("/api/v1/inspections", params={"limit": 1, "offset": 1}).json()["inspections"][0]["id"] == sure
    flagged = client.get("/api/v1/inspections", params={"flag": "low_confidence", "limit": 500}).json()
    flagged_ids = [item["id"] for item in flagged["inspections"]]
    assert unsure in flagged_ids and sure not in flagged_ids
    recent = client.get("/api/v1/inspections", params={"since": started.isoformat(), "limit": 500}).json()
    assert {sure, unsure} <= {item["id"] for item in recent["inspections"]}
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert client.get("/api/v1/inspections", params={"since": future}).json()["inspections"] == []
    assert client.get("/api/v1/inspections", params={"task": "segment", "model": "default"}).json()[
        "inspections"
    ] == []  # fmt: skip
    by_model = client.get("/api/v1/inspections", params={"model": "default", "limit": 500}).json()["inspections"]
    assert unsure in {item["id"] for item in by_model}

    one = client.get(f"/api/v1/inspections/{unsure}").json()
    assert one["id"] == unsure and one["file_name"] == "noise.png" and one["flags"] == ["low_confidence"]
    assert one["thresholds"]["low_confidence"] == 0.5 and one["review"] is None and one["channel"] == "api"
    assert one["confidence"] < 0.5 and one["scores"][one["answer"]] == pytest.approx(one["confidence"])
    assert error_of(client.get("/api/v1/inspections/999999"), 404)["code"] == "unknown_inspection"

    for params, code in (
        ({"limit": 0}, "bad_limit"),
        ({"limit": 501}, "bad_limit"),
        ({"offset": -1}, "bad_offset"),
        ({"since": "last tuesday"}, "bad_since"),
        ({"flag": "wobbly"}, "bad_flag"),
        ({"task": "dance"}, "bad_task"),
    ):
        error = error_of(client.get("/api/v1/inspections", params=params), 422)
        assert error["code"] == code and error["message"].startswith("Query parameter"), params


def test_a_review_through_rest_is_stored_and_leaves_the_queue(server):
    client, _, log = server
    unsure = classify(client, noise_png(1), "noise-1.png").json()["inspection_id"]
    assert unsure in {item.id for item in log.queue(limit=500)}

    body = {"label": "washer", "reviewer": "Ann"}  # the body: a label, no 'accept'
    review = client.post(f"/api/v1/inspections/{unsure}/review", json=body)
    assert review.status_code == 200, review.text
    stored = review.json()
    assert stored["inspection_id"] == unsure and stored["label"] == "washer" and stored["accepted"] is False
    assert stored["reviewer"] == "Ann"
    assert log.get(unsure).review.label == "washer" and unsure not in {item.id for item in log.queue(limit=500)}
    assert client.get(f"/api/v1/inspections/{unsure}").json()["review"]["label"] == "washer"

    accepted = client.post(f"/api/v1/inspections/{unsure}/review", json={"reviewer": "Bo", "accept": True}).json()
    assert accepted["accepted"] is True and accepted["label"] == log.get(unsure).answer  # a later review replaces it

    for payload, code in (
        ({"label": "washer"}, "bad_reviewer"),
        ({"reviewer": "Ann"}, "bad_review"),
        ({"reviewer": "  ", "accept": True}, "bad_reviewer"),
        ({"reviewer": "Ann", "accept": "perhaps"}, "bad_accept"),
    ):
        error = error_of(client.post(f"/api/v1/inspections/{unsure}/review", json=payload), 422)
        assert error["code"] == code, (payload, error)
    bad_json = client.post(
        f"/api/v1/inspections/{unsure}/review", content=b"{label", headers={"Content-Type": "application/json"}
    )
    assert error_of(bad_json, 422)["code"] == "bad_json"
    assert error_of(client.post(f"/api/v1/inspections/{unsure}/review"), 422)["code"] == "missing_body"
    missing = client.post("/api/v1/inspections/999999/review", json={"reviewer": "Ann", "accept": True})
    assert error_of(missing, 404)["code"] == "unknown_inspection"


def test_an_anonymous_review_is_refused_when_a_key_is_set(server):
    client, anonymous, log = server
    unsure = classify(client, noise_png(2), "noise-2.png").json()["inspection_id"]
    body = {"label": "washer", "reviewer": "Mallory"}
    for headers in ({}, {"X-API-Key": "wrong"}):
        refused = anonymous.post(f"/api/v1/inspections/{unsure}/review", json=body, headers=headers)
        assert error_of(refused, 401)["code"] == "unauthorized"
    assert log.get(unsure).review is None
    assert error_of(anonymous.get("/api/v1/inspections"), 401)["code"] == "unauthorized"
    assert error_of(anonymous.get(f"/api/v1/inspections/{unsure}"), 401)["code"] == "unauthorized"
    health = anonymous.get("/api/v1/health").json()
    assert health["api_key_required"] is True and health["inspection_log"] is True
    accepted = anonymous.post(
        f"/api/v1/inspections/{unsure}/review", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert accepted.status_code == 200 and log.get(unsure).review.reviewer == "Mallory"


def test_a_segmentation_is_logged_with_its_minimum_areas(server):
    client, _, log = server
    with STEEL.open("rb") as file:
        body = client.post("/api/v1/segment", files={"file": ("steel_1.jpg", file)}).json()
    row = log.get(body["inspection_id"])
    assert row.task == "segment" and row.channel == "api" and row.file_name == "steel_1.jpg"
    assert row.defective == body["defective"] and set(row.thresholds["min_area"]) == {
        defect["label"] for defect in body["defects"]
    }
    refs = body["models"]
    assert row.model_fingerprint == f"{refs['segmenter']['fingerprint']}+{refs['stage1']['fingerprint']}"


@pytest.fixture(params=DATABASES)
def log(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        opened = InspectionLog.open(url, store_dir=tmp_path / "store")
        yield opened
        opened.close()


def rest_client(registry, inspection_log) -> TestClient:
    """The REST routes alone, in this process (no Gradio): enough where a test breaks the log."""
    api = FastAPI()
    api.include_router(create_api_router(registry, inspection_log=inspection_log))
    return TestClient(api)


def test_a_request_whose_log_write_fails_gets_503(registry, log):
    with rest_client(registry, log) as client:
        assert isinstance(classify(client, COFFEE.read_bytes()).json()["inspection_id"], int)
        with log.engine.begin() as connection:  # the database loses its tables under the running server
            connection.execute(text("DROP TABLE reviews"))
            connection.execute(text("DROP TABLE inspections"))
        error = error_of(classify(client, COFFEE.read_bytes()), 503)
        assert error["code"] == "log_unavailable"
        assert error["message"].startswith(f"Cannot write to the inspection log at {log.url}")
        assert "--log-db" in error["message"]
        assert error_of(client.get("/api/v1/inspections"), 503)["code"] == "log_unavailable"


def test_with_the_log_off_nothing_is_recorded_and_the_routes_say_so(registry):
    with rest_client(registry, None) as client:
        assert classify(client, COFFEE.read_bytes()).json()["inspection_id"] is None
        assert client.get("/api/v1/health").json()["inspection_log"] is False
        for response in (
            client.get("/api/v1/inspections"),
            client.get("/api/v1/inspections/1"),
            client.post("/api/v1/inspections/1/review", json={"reviewer": "Ann", "accept": True}),
        ):
            error = error_of(response, 503)
            assert error["code"] == "log_disabled" and "--log-db" in error["message"]


def test_log_db_off_is_said_once_and_the_default_is_the_data_folder(capsys, monkeypatch, tmp_path):
    assert app.open_inspection_log(app.parse_args(["--log-db", "off"])) is None
    assert capsys.readouterr().err.count("decisions are not recorded") == 1
    with pytest.raises(SystemExit):
        app.parse_args(["--log-db", "off", "--store-images"])
    assert "--store-images needs the log" in capsys.readouterr().err
    monkeypatch.setenv("VISPECT_DATA", str(tmp_path / "data"))
    opened = app.open_inspection_log(app.parse_args(["--store-images"]))
    try:
        assert opened.url == f"sqlite:///{tmp_path / 'data' / 'inspections.db'}" and opened.store_images
        assert opened.store_dir == tmp_path / "data" / "images"
    finally:
        opened.close()


@pytest.mark.parametrize(
    "url, shown, reason",
    [
        (
            "postgresql+psycopg://vispect:s3cret@127.0.0.1:{port}/nowhere",
            "postgresql+psycopg://vispect:***@127.0.0.1",
            "Connection refused",
        ),
        ("sqlite:////nonexistent-folder/inspections.db", "sqlite:////nonexistent-folder", "unable to open"),
    ],
)
def test_app_py_stops_with_one_clear_line_when_the_database_is_down(url, shown, reason, tmp_path):
    """Nothing listens on the port: app.py exits before loading a model, naming the database (password hidden)."""
    url = url.format(port=free_port())
    process = subprocess.run(
        [sys.executable, "app.py", "--port", str(free_port()), "--log-db", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "VISPECT_API_KEY"}, "VISPECT_DATA": str(tmp_path)},
    )
    assert process.returncode == 1, process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Cannot open the inspection log at {shown}"), process.stderr
    assert reason in last and "--log-db" in last and "s3cret" not in process.stderr

"""The REST API (/api/v1) on a real server beside the Gradio app, as a client program would call it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

import app
from api import create_api_router
from api.routes import ApiLimits
from bench.common import free_port, stop_process, wait_for_http
from common.rle import rle_decode
from pipelines.examples import example_photos
from pipelines.fingerprints import model_fingerprint, served_weight_files
from pipelines.registry import ClassifierRegistry, LazySegmenter
from ui import build_demo

ROOT = Path(__file__).resolve().parents[1]
STEEL = ROOT / "examples" / "steel" / "steel_1.jpg"
MAX_FILE_MB = 1  # small, so "too large" needs little data
KEY = "correct-horse-battery-staple"


def photo(name: str) -> Path:
    return next(path for path in example_photos() if path.name == name)


def start(api_key: str | None = None):
    """The app as app.py serves it (default classifier, demo segmenter pair), on a free port."""
    registry = ClassifierRegistry.from_sources()
    segmenter = LazySegmenter.from_models_dir()
    key_flags = ["--api-key", api_key] if api_key else []
    args = app.parse_args(["--port", str(free_port()), "--max-file-mb", str(MAX_FILE_MB), *key_flags])
    limits = ApiLimits(max_file_bytes=int(args.max_file_mb * 2**20), concurrency=args.concurrency)
    demo = build_demo(registry, segmenter, max_file_bytes=limits.max_file_bytes)
    rest_api = create_api_router(registry, segmenter, limits, args.api_key)
    app.launch_app(demo, args, prevent_thread_lock=True, rest_api=rest_api)
    return demo, registry, segmenter


@pytest.fixture(scope="module")
def served():
    demo, registry, segmenter = start()
    try:
        with httpx.Client(base_url=demo.local_url.rstrip("/"), timeout=300) as client:
            yield client, registry, segmenter
    finally:
        demo.close()


@pytest.fixture
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def keyed_client():
    demo, _, _ = start(api_key=KEY)
    try:
        with httpx.Client(base_url=demo.local_url.rstrip("/"), timeout=300) as client:
            yield client
    finally:
        demo.close()


def classify(client, path: Path, **fields):
    with path.open("rb") as file:
        return client.post("/api/v1/classify", files={"file": (path.name, file)}, data=fields)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_health_lists_the_models_and_versions(client):
    health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["runtime"] == "auto" and health["api_key_required"] is False
    classifiers = {choice["source"]: choice for choice in health["models"]["classifiers"]}
    assert classifiers["default"]["default"] is True
    assert str(ROOT / "models" / "steel-stage1") in classifiers
    assert health["models"]["segmenter"] == {
        "available": True,
        "segmenter": str(ROOT / "models" / "steel-segformer"),
        "stage1": str(ROOT / "models" / "steel-stage1"),
    }
    import gradio
    import torch

    versions = health["versions"]
    assert versions["gradio"] == gradio.__version__ and versions["torch"] == torch.__version__.split("+")[0]
    assert versions["app"] and versions["transformers"] and versions["onnxruntime"]


def test_classify_names_the_cat_and_says_which_weights_answered(served):
    client, registry, _ = served
    chelsea = photo("chelsea.png")
    body = classify(client, chelsea, top_k="3").json()
    labels = [p["label"] for p in body["predictions"]]
    assert len(labels) == 3 and labels[0] in example_photos()[chelsea]
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    classifier = registry.get("default")
    assert all(classifier.id2label[p["index"]] == p["label"] for p in body["predictions"])
    # The same answer as the pipeline in this process, which served the request.
    local = classifier.classify(chelsea, top_k=3)
    assert labels == [p.label for p in local.predictions]
    assert scores == pytest.approx([p.score for p in local.predictions], abs=1e-6)
    assert body["unknown"] is False and body["inspection_id"] is None
    files = served_weight_files(classifier)
    assert body["model"] == {
        "source": "default",
        "fingerprint": hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest(),
        "runtime": classifier.runtime,
    }
    if classifier.runtime == "onnx":  # what actually runs is the graph, so that is what is hashed
        assert files == [Path(classifier.served.onnx_file)]
    with Image.open(chelsea) as image:
        size = image.size
    assert body["image"] == {
        "sha256": hashlib.sha256(chelsea.read_bytes()).hexdigest(),
        "width": size[0],
        "height": size[1],
    }


def test_classify_with_a_named_model_and_its_default_top_k(served):
    client, registry, _ = served
    stage1 = str(ROOT / "models" / "steel-stage1")
    body = classify(client, STEEL, model=stage1).json()
    # Four defect types: the default top_k (5) is capped at the model's classes, not refused.
    assert sorted(p["label"] for p in body["predictions"]) == sorted(registry.get(stage1).id2label.values())
    assert body["model"]["source"] == stage1 and len(body["model"]["fingerprint"]) == 64
    assert len(classify(client, photo("coffee.png")).json()["predictions"]) == 5


def test_segment_returns_areas_and_rles_that_match_the_pipeline(served):
    client, _, segmenter_source = served
    with STEEL.open("rb") as file:
        response = client.post("/api/v1/segment", files={"file": ("steel_1.jpg", file)})
    body = response.json()
    assert response.status_code == 200, response.text
    width, height = body["image"]["width"], body["image"]["height"]
    local = segmenter_source.get().segment(STEEL)
    assert [d["label"] for d in body["defects"]] == [r.label for r in local.regions]
    for defect, region in zip(body["defects"], local.regions):
        mask = rle_decode(defect["rle"], (height, width))
        assert np.array_equal(mask, region.mask), defect["label"]
        assert defect["area_pixels"] == int(mask.sum())
        assert defect["area_fraction"] == pytest.approx(defect["area_pixels"] / (width * height))
        assert defect["ruled_out"] == region.ruled_out
    assert body["defective"] == local.defective == any(d["area_pixels"] for d in body["defects"])
    stage1 = body["stage1"]
    assert stage1["probabilities"] == pytest.approx(local.stage1)
    assert stage1["ruled_out"] == [d["label"] for d in body["defects"] if d["ruled_out"]]
    assert body["models"]["segmenter"]["source"] == str(ROOT / "models" / "steel-segformer")
    assert body["models"]["stage1"]["source"] == str(ROOT / "models" / "steel-stage1")
    assert all(len(ref["fingerprint"]) == 64 for ref in body["models"].values())
    assert body["inspection_id"] is None


def test_a_request_without_a_file_is_refused_by_name(client):
    error = error_of(client.post("/api/v1/classify", data={"top_k": "3"}), 422)
    assert error["code"] == "missing_file" and "'file'" in error["message"]
    assert error_of(client.post("/api/v1/segment"), 422)["code"] == "missing_file"


def test_a_text_file_is_not_an_image(client):
    response = client.post("/api/v1/classify", files={"file": ("notes.txt", b"the parts arrived on monday")})
    error = error_of(response, 415)
    assert error["code"] == "not_an_image"
    assert "Cannot read image 'notes.txt'" in error["message"] and "JPEG, PNG" in error["message"]


def test_a_file_over_the_byte_limit_gets_413(client):
    just_over = b"\xff\xd8\xff" + bytes(MAX_FILE_MB * 2**20)  # the body limit allows the form's overhead
    error = error_of(client.post("/api/v1/classify", files={"file": ("big.jpg", just_over)}), 413)
    assert error["code"] == "file_too_large" and "1.0 MB limit" in error["message"]
    far_over = bytes(3 * MAX_FILE_MB * 2**20)  # refused from its Content-Length, before reading
    error = error_of(client.post("/api/v1/segment", files={"file": ("huge.png", far_over)}), 413)
    assert error["code"] == "file_too_large" and "--max-file-mb" in error["message"]


def test_a_chunked_upload_is_refused_without_waiting_for_its_end(client):
    """No Content-Length: the server counts the bytes and answers once they pass the limit."""
    url = urlsplit(str(client.base_url))
    head = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="endless.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    chunks = [head] + [bytes(64 * 1024)] * (2 * MAX_FILE_MB * 16)  # twice the limit, then nothing more
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(
            b"POST /api/v1/classify HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
        )
        for chunk in chunks:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # The body never ends (no last chunk): an answer now means the server stopped reading.
        answer = b""
        while b"file_too_large" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"file_too_large"' in answer


def test_an_image_over_the_pixel_limit_gets_413(client, tmp_path):
    from common.image_io import MAX_PIXELS

    side = int(MAX_PIXELS**0.5) + 1
    path = tmp_path / "wall.png"
    Image.new("L", (side, side)).save(path)  # 40 MP of one grey compresses to a few dozen kB
    assert path.stat().st_size < MAX_FILE_MB * 2**20
    error = error_of(classify(client, path), 413)
    assert error["code"] == "too_many_pixels" and f"{MAX_PIXELS:,}-pixel limit" in error["message"]


def test_an_unknown_model_gets_404_with_the_available_ones(client):
    error = error_of(classify(client, photo("coffee.png"), model="resnet-9000"), 404)
    assert error["code"] == "unknown_model"
    assert "'resnet-9000'" in error["message"] and "default" in error["message"] and "steel-stage1" in error["message"]


@pytest.mark.parametrize("top_k", ["0", "-2", "three", "2.5", "1001"])
def test_a_bad_top_k_gets_422_naming_it(client, top_k):
    error = error_of(classify(client, photo("coffee.png"), top_k=top_k), 422)
    assert error["code"] == "bad_top_k" and "top_k" in error["message"]
    if top_k == "1001":
        assert "1000 classes" in error["message"]


def test_sixteen_concurrent_requests_get_the_same_answer(client):
    coffee = photo("coffee.png")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: classify(client, coffee, top_k="3"), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    answers = [r.json() for r in responses]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["predictions"][0]["label"] in example_photos()[coffee]


def test_health_answers_while_models_are_busy(client):
    """Model calls run in worker threads, so a health check does not wait for them."""
    finished = {}

    def timed(name, call):
        response = call()
        finished[name] = time.monotonic()
        return response

    def segment():
        with STEEL.open("rb") as file:
            return client.post("/api/v1/segment", files={"file": ("steel_1.jpg", file)})

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        busy = [pool.submit(timed, f"segment {i}", segment) for i in range(4)]
        time.sleep(0.2)
        health = pool.submit(timed, "health", lambda: client.get("/api/v1/health"))
        assert health.result().status_code == 200
        assert all(future.result().status_code == 200 for future in busy)
    assert finished["health"] < max(finished[f"segment {i}"] for i in range(4))


def test_the_openapi_schema_describes_the_rest_routes(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/v1/health",
        "/api/v1/classify",
        "/api/v1/segment",
        "/api/v1/inspections",
        "/api/v1/inspections/{inspection_id}",
        "/api/v1/inspections/{inspection_id}/review",
    }
    classify_op = schema["paths"]["/api/v1/classify"]["post"]
    form = classify_op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][form]["properties"]) == {"file", "model", "top_k"}
    assert classify_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ClassifyResponse")
    assert classify_op["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert {"ClassifyResponse", "SegmentResponse", "HealthResponse"} <= set(schema["components"]["schemas"])
    listing = schema["paths"]["/api/v1/inspections"]["get"]
    assert {parameter["name"] for parameter in listing["parameters"]} == {
        "limit", "offset", "flag", "task", "since", "model"
    }  # fmt: skip
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("InspectionList")
    review = schema["paths"]["/api/v1/inspections/{inspection_id}/review"]["post"]
    body = review["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][body]["properties"]) == {"label", "reviewer", "accept"}
    assert {"InspectionOut", "ReviewOut"} <= set(schema["components"]["schemas"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert client.get("/").status_code == 200  # the Gradio page is still there


def test_the_api_key_refuses_anonymous_requests_and_accepts_the_right_key(keyed_client):
    coffee = photo("coffee.png")
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        response = keyed_client.post("/api/v1/classify", files={"file": coffee.read_bytes()}, headers=headers)
        error = error_of(response, 401)
        assert error["code"] == "unauthorized" and "X-API-Key" in error["message"], headers
        assert response.headers["www-authenticate"] == "Bearer"
    assert error_of(keyed_client.post("/api/v1/segment", files={"file": STEEL.read_bytes()}), 401)["code"] == (
        "unauthorized"
    )
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        response = keyed_client.post("/api/v1/classify", files={"file": coffee.read_bytes()}, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    health = keyed_client.get("/api/v1/health")  # health stays open, for load balancers
    assert health.status_code == 200 and health.json()["api_key_required"] is True
    schemes = keyed_client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {scheme["type"] for scheme in schemes.values()} == {"apiKey", "http"}


def test_the_key_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("VISPECT_API_KEY", raising=False)
    assert app.parse_args([]).api_key is None
    monkeypatch.setenv("VISPECT_API_KEY", "from-env")
    assert app.parse_args([]).api_key == "from-env"
    assert app.parse_args(["--api-key", "from-flag"]).api_key == "from-flag"
    monkeypatch.setenv("VISPECT_API_KEY", "")
    assert app.parse_args([]).api_key is None


def test_startup_says_once_that_an_open_api_is_open(capsys, monkeypatch):
    monkeypatch.delenv("VISPECT_API_KEY", raising=False)
    for key, expected in ((None, 1), (KEY, 0)):
        registry = ClassifierRegistry.from_sources(models_dir=None)
        demo = build_demo(registry, LazySegmenter(None))
        args = app.parse_args(["--port", str(free_port())] + (["--api-key", key] if key else []))
        app.launch_app(demo, args, prevent_thread_lock=True, rest_api=create_api_router(registry, api_key=key))
        demo.close()
        assert capsys.readouterr().err.count("REST API") == expected, key


def test_app_py_serves_the_rest_api_with_its_key(tmp_path):
    """The real command line: --api-key guards the REST routes of the server app.py starts."""
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--api-key", KEY],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v1/health", process, timeout_s=300, log_path=log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            assert client.get("/api/v1/health").json()["api_key_required"] is True
            image = {"file": ("coffee.png", io.BytesIO(photo("coffee.png").read_bytes()))}
            assert client.post("/api/v1/classify", files=image).status_code == 401
            image = {"file": ("coffee.png", io.BytesIO(photo("coffee.png").read_bytes()))}
            answer = client.post("/api/v1/classify", files=image, headers={"X-API-Key": KEY}).json()
        assert answer["predictions"][0]["label"] in example_photos()[photo("coffee.png")]
        assert "REST API" not in log.read_text()  # a key is set: no "open" warning
    finally:
        stop_process(process)


def test_the_fingerprint_hashes_what_serves_the_model(tiny_vit_dir, tiny_vit_onnx_dir):
    from common.checkpoint_files import ONNX_FILE, WEIGHTS_FILE
    from pipelines.classification import ImageClassifier

    eager = ImageClassifier.from_pretrained(tiny_vit_dir, runtime="torch")
    exported = ImageClassifier.from_pretrained(tiny_vit_onnx_dir, runtime="auto")
    assert served_weight_files(eager) == [Path(tiny_vit_dir) / WEIGHTS_FILE]
    assert served_weight_files(exported) == [Path(tiny_vit_onnx_dir) / ONNX_FILE]
    for classifier, file in ((eager, WEIGHTS_FILE), (exported, ONNX_FILE)):
        expected = hashlib.sha256((Path(classifier.checkpoint_dir) / file).read_bytes()).hexdigest()
        assert model_fingerprint(classifier) == expected
    # Copies of the same weights hash alike; the ONNX graph is another file, so another fingerprint.
    copy = ImageClassifier.from_pretrained(tiny_vit_onnx_dir, runtime="torch")  # export_onnx_copy copied the weights
    assert model_fingerprint(copy) == model_fingerprint(eager)
    assert model_fingerprint(exported) != model_fingerprint(eager)

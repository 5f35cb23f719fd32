"""The HTTP API through Starlette's TestClient: answers, errors, and the page."""

from __future__ import annotations

import io
import re
import threading

import pytest
from PIL import Image
from serve_checks import assert_records_match, expected_records
from starlette.testclient import TestClient

from maskrcnn.serve.app import ServeLimits, create_app
from maskrcnn.serve.predictor import Predictor


@pytest.fixture(scope="module")
def client(tiny_model):
    app = create_app(
        Predictor(model=tiny_model, name="tiny.safetensors"),
        limits=ServeLimits(max_upload_bytes=400_000, max_pixels=1_000_000),
    )
    with TestClient(app) as c:
        yield c


def test_health_metadata_and_page(client):
    assert client.get("/health").json() == {"status": "ok", "pending": 0}
    meta = client.get("/metadata").json()
    assert [c["name"] for c in meta["classes"]] == ["square", "bar"]
    assert meta["model"] == "tiny.safetensors" and meta["precision"] == "fp32"
    assert meta["limits"]["max_upload_bytes"] == 400_000 and meta["default_score_thresh"] == 0.5
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="canvas"' in page.text and "/predict" in page.text


def test_predict_raw_body_and_multipart_give_the_eager_answer(client, tiny_model, upload):
    data, image = upload
    expected = expected_records(tiny_model, image, 0.3)
    assert expected, "the test needs detections"
    raw = client.post(
        "/predict?score_thresh=0.3&image_id=5", content=data, headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["image"] == {"height": 237, "width": 301} and body["score_thresh"] == 0.3
    assert_records_match(body["detections"], expected)
    assert {r["image_id"] for r in body["detections"]} == {5}
    assert set(body["latency_ms"]) == {"decode", "inference", "encode", "total"}
    form = client.post(
        "/predict",
        files={"image": ("photo.png", data, "image/png")},
        data={"score_thresh": "0.3", "image_id": "5"},
    )
    assert form.status_code == 200, form.text
    assert form.json()["detections"] == body["detections"]
    default = client.post("/predict", content=data).json()  # default threshold 0.5
    assert_records_match(default["detections"], expected_records(tiny_model, image, 0.5))


def test_bad_uploads_get_clear_4xx_and_the_server_keeps_serving(client, upload):
    data, _ = upload
    cases = [
        (dict(content=b"%PDF-1.4 not an image"), 415, "not an image"),
        (dict(content=b""), 415, "empty"),
        (dict(content=b"\0" * 400_001), 413, "larger than the limit of 400000 bytes"),
        (dict(files={"image": ("x.png", b"\0" * 400_001, "image/png")}), 413, "larger"),
        (dict(files={"other": ("notes.txt", b"hello", "text/plain")}), 415, "not an image"),
        (dict(data={"score_thresh": "0.5"}), 415, "not an image"),  # a form, no file
        (dict(content=data, params={"score_thresh": "high"}), 400, "must be a float"),
        (dict(content=data, params={"score_thresh": "1.5"}), 400, r"in \[0.0, 1.0\]"),
    ]
    for kwargs, status, message in cases:
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert re.search(message, response.json()["error"])
    big = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(big, format="PNG")  # small file, 1.1 MP
    response = client.post("/predict", content=big.getvalue())
    assert response.status_code == 413 and "1100 x 1000 pixels" in response.json()["error"]
    assert client.get("/predict").status_code == 405
    assert client.post("/predict", content=data).status_code == 200


def test_health_answers_while_a_prediction_runs(tiny_model, upload):
    data, _ = upload
    predictor = Predictor(model=tiny_model, name="tiny")
    started, release = threading.Event(), threading.Event()
    original = predictor.predict

    def held_predict(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return original(*args, **kwargs)

    predictor.predict = held_predict
    with TestClient(create_app(predictor)) as c:
        answer: dict = {}
        worker = threading.Thread(target=lambda: answer.update(r=c.post("/predict", content=data)))
        worker.start()
        assert started.wait(30)
        health = c.get("/health")  # the prediction is still running
        assert health.status_code == 200 and health.json()["pending"] == 1
        release.set()
        worker.join(30)
    assert answer["r"].status_code == 200

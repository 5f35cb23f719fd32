"""A real uvicorn server on a free loopback port: a bounded burst of concurrent requests."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message

import pytest
import uvicorn
from serve_checks import assert_records_match, expected_records

from maskrcnn.serve.app import ServeLimits, create_app
from maskrcnn.serve.predictor import Predictor

BURST = 12  # requests sent at once, to 127.0.0.1 only


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def server(tiny_model):
    """Starts the app in a thread; yields (base URL, the app's limits); stops it."""
    limits = ServeLimits(max_pending=4)
    app = create_app(Predictor(model=tiny_model, name="tiny"), limits=limits)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", limit_concurrency=32)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", limits
    srv.should_exit = True
    thread.join(30)
    sock.close()


def _post(url: str, data: bytes) -> tuple[int, Message, dict]:
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "image/png")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def test_bounded_burst_gets_correct_answers_or_503(server, tiny_model, upload):
    base, limits = server
    data, image = upload
    expected = expected_records(tiny_model, image, 0.3)
    url = f"{base}/predict?score_thresh=0.3"
    assert _post(url, data)[0] == 200  # warm
    rss = []
    for _ in range(2):
        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(lambda _: _post(url, data), range(BURST)))
        rss.append(_rss_mb())
        ok = [body for status, _, body in answers if status == 200]
        busy = [(h, body) for status, h, body in answers if status == 503]
        assert len(ok) + len(busy) == BURST  # nothing else: no 500, no dropped connection
        assert len(ok) >= limits.max_pending
        for body in ok:
            assert_records_match(body["detections"], expected)
        for headers, body in busy:
            assert headers["Retry-After"] == "1" and "busy" in body["error"]
        with urllib.request.urlopen(f"{base}/health", timeout=30) as response:
            assert json.loads(response.read()) == {"status": "ok", "pending": 0}
    assert rss[1] - rss[0] < 100, f"resident memory grew from {rss[0]:.0f} to {rss[1]:.0f} MB"

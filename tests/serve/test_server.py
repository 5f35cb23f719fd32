"""A real uvicorn server on a free loopback port: a bounded burst of concurrent requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message

from serve_checks import assert_records_match, expected_records

BURST = 12  # requests sent at once, to 127.0.0.1 only


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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

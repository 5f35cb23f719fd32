"""Serving fixtures: an upload and the image it decodes to; a real server on loopback."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from serve_checks import png_bytes

from maskrcnn.serve.app import ServeLimits, create_app
from maskrcnn.serve.predictor import Predictor


@pytest.fixture(scope="session")
def upload(test_images) -> tuple[bytes, torch.Tensor]:
    """A PNG upload (237 x 301) and the [3, H, W] image it decodes to."""
    data = png_bytes(test_images[0])
    with Image.open(io.BytesIO(data)) as img:
        decoded = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return data, decoded


@pytest.fixture
def server(tiny_model):
    """Starts the app in a thread; yields (base URL, the app's limits); stops it."""
    limits = ServeLimits(max_pending=4, default_score_thresh=0.3)
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

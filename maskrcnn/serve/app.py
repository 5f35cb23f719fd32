"""The HTTP side of ``maskrcnn serve``: a Starlette app around a :class:`Predictor`.

Routes:

- ``POST /predict``: the image as the request body (any image content type, or
  ``application/octet-stream``) or as a multipart form's file field (``image``, or the first
  file). Query or form parameters: ``score_thresh`` (in [0, 1], default 0.5) and
  ``image_id`` (an int copied into each record, default 0). Answers
  ``{"image": {"height", "width"}, "detections": [COCO results records],
  "latency_ms": {"decode", "inference", "encode", "total"}}``.
- ``GET /health``: ``{"status": "ok", "pending": n}``, answered while predictions run (they
  run in a worker thread, one at a time, never on the event loop).
- ``GET /metadata``: classes, model, backend, precision, limits.
- ``GET /``: the page (``static/index.html``): drop or pick an image, see it drawn.

Errors are JSON ``{"error": message}``: 400 for a bad parameter, 413 for an upload over
``max_upload_bytes`` (checked on ``Content-Length`` and again while reading) or an image
over ``max_pixels``, 415 for bytes that are not an image, 503 while ``max_pending``
predictions are already waiting or running (with ``Retry-After``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from maskrcnn.serve.predictor import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    Predictor,
    decode_image,
)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts.

    Attributes:
        max_upload_bytes: largest request body.
        max_pixels: largest image (width x height), checked before decoding the pixels.
        max_pending: predictions waiting or running at once; more get 503.
        default_score_thresh: ``score_thresh`` when the request gives none.
    """

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pending: int = 8
    default_score_thresh: float = 0.5


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(err: HTTPError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass ``limit`` bytes."""
    too_large = HTTPError(413, f"the upload is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError as err:
            raise HTTPError(400, "Content-Length is not a number") from err
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_image(
    request: Request, body: bytes, limit: int
) -> tuple[bytes, dict[str, str]]:
    """The file and the other fields of a multipart form (already read into ``body``)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=1, max_fields=20, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except Exception as err:  # starlette's MultiPartException and parser errors
        raise HTTPError(400, f"malformed multipart form ({err})") from err
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise HTTPError(400, "the multipart form has no file: send it as the 'image' field")
    image = form.get("image")
    upload = image if isinstance(image, UploadFile) else files[0]
    data = await upload.read()
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    return data, fields


def _parameter(
    name: str,
    query: Any,
    fields: dict[str, str],
    default: Any,
    kind: type,
    low: float,
    high: float,
) -> Any:
    raw = fields.get(name, query.get(name))
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as err:
        raise HTTPError(400, f"{name} must be a {kind.__name__}, got {raw!r}") from err
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be in [{low}, {high}], got {value}")
    return value


def create_app(predictor: Predictor, *, limits: ServeLimits | None = None) -> Starlette:
    """The ASGI app serving ``predictor`` (run it with uvicorn).

    Args:
        predictor: the model behind ``/predict``.
        limits: upload, image and queue limits (defaults: 20 MiB, 40 MP, 8 pending).
    """
    limits = limits or ServeLimits()
    worker = anyio.CapacityLimiter(1)  # one prediction at a time; the rest wait their turn
    state = {"pending": 0}
    page = resources.files("maskrcnn.serve").joinpath("static/index.html").read_text("utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pending": state["pending"]})

    async def metadata(request: Request) -> Response:
        info = predictor.metadata()
        info["limits"] = {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "max_pending": limits.max_pending,
        }
        info["default_score_thresh"] = limits.default_score_thresh
        return JSONResponse(info)

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        try:
            body = await _read_body(request, limits.max_upload_bytes)
            fields: dict[str, str] = {}
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                body, fields = await _multipart_image(request, body, limits.max_upload_bytes)
            score_thresh = _parameter(
                "score_thresh",
                request.query_params,
                fields,
                limits.default_score_thresh,
                float,
                0.0,
                1.0,
            )
            image_id = _parameter("image_id", request.query_params, fields, 0, int, 0, 2**63 - 1)
            if state["pending"] >= limits.max_pending:
                raise HTTPError(
                    503,
                    f"busy: {state['pending']} predictions are pending; retry shortly",
                    {"Retry-After": "1"},
                )
            state["pending"] += 1
            try:
                decode_start = time.perf_counter()
                try:
                    image = await anyio.to_thread.run_sync(
                        partial(decode_image, body, max_pixels=limits.max_pixels)
                    )
                except ImageTooLargeError as err:
                    raise HTTPError(413, str(err)) from err
                except ImageDecodeError as err:
                    raise HTTPError(415, str(err)) from err
                decode_ms = (time.perf_counter() - decode_start) * 1000
                result = await anyio.to_thread.run_sync(
                    partial(predictor.predict, image, score_thresh=score_thresh, image_id=image_id),
                    limiter=worker,
                )
            finally:
                state["pending"] -= 1
        except HTTPError as err:
            return _error(err)
        total_ms = (time.perf_counter() - start) * 1000
        return JSONResponse(
            {
                "image": {"height": result.height, "width": result.width},
                "score_thresh": score_thresh,
                "detections": result.detections,
                "latency_ms": {
                    "decode": round(decode_ms, 1),
                    "inference": round(result.inference_ms, 1),
                    "encode": round(result.encode_ms, 1),
                    "total": round(total_ms, 1),
                },
            }
        )

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
        ]
    )

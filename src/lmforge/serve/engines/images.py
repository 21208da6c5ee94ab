"""An image classifier served: each request's images (base64 in JSON, POST /v1/classify) are
decoded and run through the CNN in a worker thread, one request at a time per model (the lock
keeps requests from competing for the CPU threads). Past `max_queue` waiting requests a request
gets 503; an input that is no base64, too large, or no image is a 422 naming it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lmforge.serve.engines.threaded import ThreadedEngine
from lmforge.serve.errors import APIError
from lmforge.serve.metrics import ServeMetrics
from lmforge.tasks.images import ImageClassifier

MAX_IMAGE_BYTES = 4_000_000  # one image's file, decoded from base64
MAX_IMAGES = 64  # images per request


class ImageEngine(ThreadedEngine):
    def __init__(self, name: str, predictor: ImageClassifier, max_queue: int,
                 metrics: ServeMetrics) -> None:
        super().__init__(name, max_queue, metrics)
        self.predictor = predictor

    @staticmethod
    def blobs(inputs: list[str]) -> list[bytes]:
        """Each input's bytes, from base64 (a data: URL's prefix allowed); 422 naming a bad one."""
        if not inputs or len(inputs) > MAX_IMAGES:
            raise APIError(422, f"input has {len(inputs)} images; send 1 to {MAX_IMAGES} per "
                           "request", code="invalid_request", param="input")
        out = []
        for index, text in enumerate(inputs):
            payload = text.partition(",")[2] if text.startswith("data:") else text
            if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
                raise APIError(422, f"input[{index}] is larger than {MAX_IMAGE_BYTES:,} bytes",
                               code="invalid_request", param=f"input[{index}]")
            try:
                out.append(base64.b64decode(payload, validate=True))
            except (binascii.Error, ValueError):
                raise APIError(422, f"input[{index}] is not base64: send each image's file "
                               "(png, jpg, webp) base64-encoded", code="invalid_request",
                               param=f"input[{index}]") from None
        return out

    async def classify(self, blobs: list[bytes]) -> list[dict[str, Any]]:
        try:
            return await self.run(self._classify, blobs)
        except ValueError as error:  # an input that is no image
            raise APIError(422, str(error), code="invalid_request", param="input") from None

    def _classify(self, blobs: list[bytes]) -> list[dict[str, Any]]:
        return self.predictor.predict(self.predictor.decode(blobs))

"""ASGI middlewares in front of LitServe's /predict: request checks and request metrics.

`CheckRequests` reads the body (refusing it past `max_body_bytes`), parses JSON whatever the Content-Type says (so
`curl -d '{"digit": 5}'` works, which sends a form type), validates it and hands LitServe the normalized request
(defaults and the seed filled in). Every refusal is one line of JSON with a 4xx status; nothing reaches the worker.
`CountRequests` times every /predict response and counts it by status code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pantheon.serving.validation import RequestError

PREDICT_PATH = "/predict"


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class CheckRequests:
    """Validate POST /predict bodies with `validator` (payload -> request with .to_json()) before LitServe."""

    def __init__(self, app: ASGIApp, validator: Callable[[Any], Any], max_body_bytes: int) -> None:
        self.app, self.validator, self.max_body_bytes = app, validator, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        too_large = {
            "error": f"body: over {self.max_body_bytes} bytes; allowed: at most {self.max_body_bytes} bytes",
            "field": "body",
            "allowed": f"at most {self.max_body_bytes} bytes",
        }
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json(send, 413, too_large)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await send_json(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            error = RequestError(
                "body",
                f"not JSON ({err.__class__.__name__} at byte {getattr(err, 'pos', 0)})",
                "a JSON object",
            )
            await send_json(send, 400, error.as_json())
            return
        try:
            request = self.validator(payload)
        except RequestError as err:
            await send_json(send, 422, err.as_json())
            return
        await self.app(
            self._json_scope(scope), self._replay(json.dumps(request.to_json()).encode(), receive), send
        )

    @staticmethod
    def _json_scope(scope: Scope) -> Scope:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


class CountRequests:
    """Count /predict responses by status code and time them (Prometheus, see pantheon.serving.metrics)."""

    def __init__(self, app: ASGIApp) -> None:
        from pantheon.serving import metrics

        self.app = app
        metrics.register()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        from pantheon.serving import metrics

        start, status = time.perf_counter(), 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            metrics.observe_request(status, time.perf_counter() - start)

"""Request-body size limit, enforced before anything parses the body.

Why here and not in FastAPI: the endpoints read the whole body into memory and then
parse it as JSON; an unbounded upload costs the ingress its memory (and the JSON
parser its CPU) before any validation can say no. This ASGI middleware sits in front
of that and counts bytes as they arrive:

- a `Content-Length` above the limit is answered 413 at once, without reading a byte
  of the body (the server then closes the connection; HTTP clients read the response
  they were sent before their upload was cut off);
- otherwise (a chunked body, no length) the body is read here, chunk by chunk, before
  the app runs; the first chunk past the limit gets the same 413 and nothing is
  handed to the app. Within the limit the chunks are replayed to the app unchanged.

Cost: one header scan per request and one length addition per body chunk; the body
is held once, as the endpoints would hold it anyway.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# OpenAI's code for this status; SDKs surface it as-is.
TOO_LARGE_CODE = "request_too_large"


def too_large_message(max_body_bytes: int) -> str:
    return (f"Request body too large: the limit is {max_body_bytes} bytes "
            "(server.max_body_bytes).")


def too_large_response(max_body_bytes: int) -> JSONResponse:
    return JSONResponse(
        status_code=413,
        content={"error": {"message": too_large_message(max_body_bytes),
                           "type": "invalid_request_error", "param": None,
                           "code": TOO_LARGE_CODE}},
        # The unread rest of the upload makes the connection unusable for another request.
        headers={"connection": "close"},
    )


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when absent or malformed (then the body
    is counted as it arrives instead; a malformed header is the server's to reject)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
            return length if length >= 0 else None
    return None


class BodyLimitMiddleware:
    """Rejects HTTP requests whose body exceeds `max_body_bytes` with a 413."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.max_body_bytes:
            await too_large_response(self.max_body_bytes)(scope, receive, send)
            return
        # Read the body here, before the app: an error raised from inside the app's
        # receive would pass through upstream's BaseHTTPMiddleware, which turns it
        # into a 500. Every endpoint reads the whole body into memory anyway, so
        # holding it here first costs no more than the limit.
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client disconnected: let the app see it
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                await too_large_response(self.max_body_bytes)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            # The buffered body first, then the server's own messages (disconnect).
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

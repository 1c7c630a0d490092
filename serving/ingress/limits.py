"""Request-body limits, enforced before anything parses the body: size, encoding, nesting.

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

A JSON body that fits is then checked for what Python's JSON parser lets through but
the rest of the path cannot carry (each found by fuzzing the live service, each a 500
before this check):
- bytes that are not UTF-8: `json.loads` decodes bytes with `surrogatepass`, so a
  UTF-8-encoded surrogate becomes a string the tokenizer cannot encode;
- an unpaired `\uD800`-style escape: valid JSON, but not text (a pair is an astral
  character and passes);
- nesting deeper than `max_json_depth`: a deep value (say a JSON schema in
  `response_format`) parses, then fails to pickle on its way to the replica.
Each is a 400 in OpenAI's shape.

Cost: one header scan per request and one length addition per body chunk; the body
is held once, as the endpoints would hold it anyway. The JSON checks are one strict
UTF-8 decode and one regex pass over strings and brackets (the surrogate scan runs
only when a surrogate escape appears at all).
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# OpenAI's code for this status; SDKs surface it as-is.
TOO_LARGE_CODE = "request_too_large"


def _error(status: int, message: str, code: str, **headers: str) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers or None, content={
        "error": {"message": message, "type": "invalid_request_error", "param": None,
                  "code": code}})


def too_large_message(max_body_bytes: int) -> str:
    return (f"Request body too large: the limit is {max_body_bytes} bytes "
            "(server.max_body_bytes).")


def too_large_response(max_body_bytes: int) -> JSONResponse:
    # The unread rest of the upload makes the connection unusable for another request.
    return _error(413, too_large_message(max_body_bytes), TOO_LARGE_CODE, connection="close")


# A JSON string (escapes skipped whole) or one bracket; strings are matched so that
# brackets inside them do not count.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_OPENERS = frozenset(b"[{")
_QUOTE = ord('"')
# Any escape, whole (so an escaped backslash never starts another); group 1 is set
# for a high surrogate, group 2 for a low one.
_ESCAPE = re.compile(rb"\\(?:u(?:([dD][89abAB][0-9a-fA-F]{2})|([dD][c-fC-F][0-9a-fA-F]{2}))|.)",
                     re.S)
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """Whether brackets outside strings nest deeper than `max_depth` (stops at the
    first level past it, so a 100k-deep body costs no more than a shallow one)."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(body):
        first = match.group()[0]
        if first in _OPENERS:
            depth += 1
            if depth > max_depth:
                return True
        elif first != _QUOTE:
            depth -= 1
    return False


def has_lone_surrogate_escape(body: bytes) -> bool:
    r"""Whether a `\uD800`-`\uDFFF` escape appears outside a high-low pair."""
    if not _MAYBE_SURROGATE.search(body):
        return False
    pending_high_end = -1  # end offset of a high surrogate still waiting for its low
    for match in _ESCAPE.finditer(body):
        if pending_high_end >= 0:
            if match.group(2) is not None and match.start() == pending_high_end:
                pending_high_end = -1
                continue
            return True
        if match.group(1) is not None:
            pending_high_end = match.end()
        elif match.group(2) is not None:
            return True
    return pending_high_end >= 0


def json_body_problem(body: bytes, max_depth: int) -> str | None:
    """Why a JSON body cannot be served (one line for the client), or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "Request body could not be decoded: send UTF-8 encoded JSON."
    if has_lone_surrogate_escape(body):
        return ("Request body contains an unpaired UTF-16 surrogate escape "
                "(\\ud800-\\udfff): send text, or a complete surrogate pair.")
    if json_depth_exceeds(body, max_depth):
        return (f"Request body is nested deeper than {max_depth} levels "
                "(server.max_json_depth).")
    return None


def is_json(scope: Scope) -> bool:
    """A JSON body by its Content-Type, or one without any (FastAPI parses those as JSON)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


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
    """413 for a body over `max_body_bytes`; 400 for a JSON body that is not UTF-8 text
    or nests deeper than `max_json_depth`."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

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
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if body and is_json(scope):
            problem = json_body_problem(body, self.max_json_depth)
            if problem is not None:
                await _error(400, problem, "invalid_request")(scope, receive, send)
                return

        async def replay() -> Message:
            # The buffered body first, then the server's own messages (disconnect).
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

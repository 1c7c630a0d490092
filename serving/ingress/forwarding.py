"""A request body that parsed and validated but cannot be shipped to a replica.

The ingress hands each request to a replica through a Ray actor call, which pickles
the parsed body. Some bodies validate yet do not pickle: fuzzing found embedding
requests whose free-form fields hold values Ray's serializer refuses ("Could not
serialize the argument ..." from `_raylet`, a `TypeError`). Upstream's catch-all turns
that into a 500, though nothing failed but the input. Here it becomes a 400 in OpenAI's
shape; any other error passes through unchanged, and nothing reaches a replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from serving.ray_private import OpenAIHTTPException

# The start of the message Ray raises when an actor call's argument does not pickle.
_UNSERIALIZABLE = "Could not serialize the argument"


async def refuse_unforwardable(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The items of `stream`; a body Ray cannot serialize raises a 400 instead."""
    try:
        async for item in stream:
            yield item
    except TypeError as err:
        if not str(err).startswith(_UNSERIALIZABLE):
            raise
        raise OpenAIHTTPException(
            status_code=400, type="invalid_request_error",
            message="The request holds a value that cannot be forwarded to the engine; "
                    "send plain JSON strings, numbers, lists and objects.") from err

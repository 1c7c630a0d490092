"""Every private Ray API this project uses, in one place: Ray 2.60.0 (pyproject pins
``ray[serve]==2.60.0``; tests/unit/serving/test_ray_private.py checks the installed
version, that each name below still resolves, and that no other module of serving/,
bench/ or chaos/ imports a private Ray path).

Public names come from their public homes, never from here: ``ReplicaID``,
``PendingRequest``, ``RunningReplica`` and ``RequestRouter`` from
``ray.serve.request_router``; ``LLMConfig``, ``build_llm_deployment``, ``LLMServer``,
``OpenAiIngress``, ``make_fastapi_ingress`` and the request bodies
(``ChatCompletionRequest``, ``CompletionRequest``) from ``ray.serve.llm``.

What has no public counterpart, and why each is needed:

``OpenAIHTTPException`` (``ray.llm._internal.serve.core.configs.openai_api_models``)
    The exception upstream's ingress turns into an OpenAI error body. The ingress
    registers its handler for it and raises it (serving/ingress/ingress.py,
    serving/ingress/forwarding.py, serving/prefixes/backend.py); ``ray.serve.llm``
    exports no exception type.
``ErrorResponse`` (same module)
    ``ray.serve.llm.openai_api_models.ErrorResponse`` is a public *subclass*; the
    replies a replica sends are built as this base class, so ``isinstance`` on a
    reply (serving/prefixes/backend.py) needs the base.
``to_model_metadata`` (same module)
    The model card ``OpenAiIngress`` takes per model; ``ray.serve.llm``'s own
    ``OpenAiIngress`` example imports it from here too.
``init_upstream_app``: ``init`` of ``ray.llm._internal.serve.core.ingress.ingress``
    Upstream's FastAPI app with its middleware, metrics and request ids, which
    ``make_fastapi_ingress(app=...)`` needs when the app carries our own handlers.
``DEFAULT_ENDPOINTS`` (same module)
    Upstream's OpenAI routes; ``make_fastapi_ingress(endpoint_map=...)`` replaces
    them, so adding ``/ready``, ``/metrics``, prefixes and documents means
    extending this map.
``VLLM_CLIENT_ERRORS`` (``ray.llm._internal.common.errors``)
    vLLM's request-validation errors as upstream classifies them; the ingress answers
    them 400 instead of 500.
``RawRequestInfo`` (``ray.llm._internal.serve.core.protocol``)
    What a replica's chat/completions call receives besides the body (headers); the
    replica's trace span (serving/observability/tracing.py) builds one when upstream
    passed none.
``VLLMEngine`` (``ray.llm._internal.serve.engines.vllm.vllm_engine``)
    The engine ``LLMServer`` starts. A replica starts a subclass of it
    (serving/replica/engine.py) that skips the download task for a model already on
    the node's disk; ``LLMServer`` takes the class (its ``_engine_cls``), but upstream
    exports neither the class nor a setting for the skip.
``PowerOfTwoChoicesRequestRouter``
(``ray.serve._private.request_router.pow_2_router``)
    Serve's default router, the ``pow2`` baseline (serving/routing/baselines.py);
    Serve selects it by default but exports no class to subclass.
``PrefixTree``, ``PrefixTreeActor``
(``ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree``)
    The data structure of ``PrefixCacheAffinityRouter`` (public), and the Ray actor
    its instances share it through, whose decision cost bench/shared_tree.py and
    bench/decision_cost.py measure on their own.
``DeploymentID``, ``SERVE_CONTROLLER_NAME``, ``SERVE_NAMESPACE``
(``ray.serve._private.common``, ``ray.serve._private.constants``)
    The chaos drills (chaos/cluster.py) ask the Serve controller for replica ranks
    and change a deployment's replica count in place; no public API reaches the
    controller, and its methods take a ``DeploymentID``.
``serve_request_id()``: ``ray.serve.context._get_serve_request_context()._internal_request_id``
    Serve's internal id of the request being handled, the one value Serve's request
    router also sees (``PendingRequest.metadata.internal_request_id``), so the only
    key by which the ingress finds what the router recorded
    (serving/routing/registry.py). The public ``serve.context`` exposes neither.
``own_serve_request()``: sets ``ray.serve.context._serve_request_context``
    Gives the calling task a request id of its own. Serve's router indexes pending
    requests by that id, so two handle calls sent at once under one HTTP request (the
    legs of a document question) would share one entry: one is assigned twice, the
    other never (its routing task spins). Each leg's task takes a fresh id, which the
    router then records and the ingress reads back as above.

Importing this module costs nothing: each name is imported from Ray on first use
(several of these modules import vLLM, seconds of work a benchmark or a drill that
needs one data structure must not pay).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

RAY_VERSION = "2.60.0"

# name -> (private module, attribute): everything this module hands out.
PRIVATE_NAMES: dict[str, tuple[str, str]] = {
    "OpenAIHTTPException": ("ray.llm._internal.serve.core.configs.openai_api_models",
                            "OpenAIHTTPException"),
    "ErrorResponse": ("ray.llm._internal.serve.core.configs.openai_api_models",
                      "ErrorResponse"),
    "to_model_metadata": ("ray.llm._internal.serve.core.configs.openai_api_models",
                          "to_model_metadata"),
    "init_upstream_app": ("ray.llm._internal.serve.core.ingress.ingress", "init"),
    "DEFAULT_ENDPOINTS": ("ray.llm._internal.serve.core.ingress.ingress", "DEFAULT_ENDPOINTS"),
    "VLLM_CLIENT_ERRORS": ("ray.llm._internal.common.errors", "VLLM_CLIENT_ERRORS"),
    "RawRequestInfo": ("ray.llm._internal.serve.core.protocol", "RawRequestInfo"),
    "VLLMEngine": ("ray.llm._internal.serve.engines.vllm.vllm_engine", "VLLMEngine"),
    "PowerOfTwoChoicesRequestRouter": ("ray.serve._private.request_router.pow_2_router",
                                       "PowerOfTwoChoicesRequestRouter"),
    "PrefixTree": ("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree",
                   "PrefixTree"),
    "PrefixTreeActor": ("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree",
                        "PrefixTreeActor"),
    "DeploymentID": ("ray.serve._private.common", "DeploymentID"),
    "SERVE_CONTROLLER_NAME": ("ray.serve._private.constants", "SERVE_CONTROLLER_NAME"),
    "SERVE_NAMESPACE": ("ray.serve._private.constants", "SERVE_NAMESPACE"),
}

if TYPE_CHECKING:
    from ray.llm._internal.common.errors import VLLM_CLIENT_ERRORS
    from ray.llm._internal.serve.core.configs.openai_api_models import (
        ErrorResponse,
        OpenAIHTTPException,
        to_model_metadata,
    )
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
    from ray.llm._internal.serve.core.ingress.ingress import init as init_upstream_app
    from ray.llm._internal.serve.core.protocol import RawRequestInfo
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
        PrefixTree,
        PrefixTreeActor,
    )
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

__all__ = [
    "DEFAULT_ENDPOINTS",
    "RAY_VERSION",
    "SERVE_CONTROLLER_NAME",
    "SERVE_NAMESPACE",
    "VLLM_CLIENT_ERRORS",
    "DeploymentID",
    "ErrorResponse",
    "OpenAIHTTPException",
    "PowerOfTwoChoicesRequestRouter",
    "PrefixTree",
    "PrefixTreeActor",
    "RawRequestInfo",
    "VLLMEngine",
    "init_upstream_app",
    "own_serve_request",
    "serve_request_id",
    "to_model_metadata",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = PRIVATE_NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def own_serve_request() -> str:
    """Give the current asyncio task a Serve request context of its own, with a fresh
    internal request id (see the module docstring); returns the id. Only this task
    (and tasks it starts) see it: each task runs in a copy of the context."""
    import dataclasses
    import uuid

    from ray.serve.context import _get_serve_request_context, _serve_request_context

    request_id = str(uuid.uuid4())
    _serve_request_context.set(dataclasses.replace(_get_serve_request_context(),
                                                   _internal_request_id=request_id))
    return request_id


def serve_request_id() -> str:
    """Serve's internal id of the request this task is handling: unique per HTTP
    request (unlike ``x-request-id``, which a client may reuse) and the very id the
    ingress's handle call puts in ``PendingRequest.metadata.internal_request_id``."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context()._internal_request_id

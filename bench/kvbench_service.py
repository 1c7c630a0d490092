"""The ``kvbench`` conversation through the running service: vLLM's prefix cache on and off.

The same system prompt and user turns as the transformers runs go to
``/v1/chat/completions`` with the ``openai`` client, one turn after another, each
request carrying the whole history (earlier replies as the service wrote them).
Requests stream with ``stream_options.include_usage``; per turn the run records
TTFT (send to the first chunk with text), end-to-end time, ``prompt_tokens`` and
``usage.prompt_tokens_details.cached_tokens`` -- the prompt tokens vLLM's prefix
cache served, a whole number of KV blocks (128 tokens on the CPU engine).
Greedy (temperature 0) with ``min_tokens = max_tokens`` (a vLLM sampling
parameter), so every reply has the same length, as in the transformers runs.

Two ways to run it:

* ``--url``: against a service that is already running; its prefix-cache setting
  is whatever it was started with (``--prefix-caching on|off`` labels the run).
* ``--service both``: ``run_both`` starts ``cacheroute serve`` itself
  (``service.py``), once with ``engine.enable_prefix_caching: true`` and once with
  ``false``, one replica and the ``pow2`` policy each time (the ``cacheroute``
  policy requires the prefix cache; with one replica routing plays no part), and
  stops each before the next.

A failed turn is recorded with its error and ends that run: later turns would
need its reply. Nothing is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.kv_conversation import Conversation

# A turn slower than this is recorded as an error rather than waited for.
REQUEST_TIMEOUT_S = 600.0
# Name the benchmark's own services give the model (what clients send as `model`).
SERVICE_MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True, kw_only=True)
class ServiceTurn:
    run: str  # "url", "prefix-caching-on" or "prefix-caching-off"
    prefix_caching: bool | None  # None: a --url run not labelled
    turn: int
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None
    ttft_s: float | None
    e2e_s: float | None
    error: str | None


class ServiceUnavailable(RuntimeError):
    """The service could not be asked anything (unreachable, or lists no model)."""


def run_label(prefix_caching: bool | None) -> str:
    return "url" if prefix_caching is None else (
        "prefix-caching-on" if prefix_caching else "prefix-caching-off")


def served_model(client: Any) -> str:
    """The first model the service lists."""
    try:
        models = list(client.models.list())
    except Exception as err:  # noqa: BLE001 -- any failure here means "cannot reach it"
        raise ServiceUnavailable(f"cannot list models at {client.base_url}: "
                                 f"{type(err).__name__}: {err}") from None
    if not models:
        raise ServiceUnavailable(f"{client.base_url} lists no model")
    return str(models[0].id)


def _one_turn(client: Any, model: str, messages: list[dict[str, str]],
              max_tokens: int) -> tuple[str, dict[str, Any]]:
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"min_tokens": max_tokens})
    first: float | None = None
    parts: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text = getattr(choice.delta, "content", None)
            if text:
                if first is None:
                    first = time.perf_counter()
                parts.append(text)
    end = time.perf_counter()
    details = getattr(usage, "prompt_tokens_details", None)
    return "".join(parts), {
        "ttft_s": None if first is None else first - start,
        "e2e_s": end - start,
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "cached_tokens": getattr(details, "cached_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", None),
    }


def run_conversation(*, base_url: str, conversation: Conversation, max_tokens: int,
                     prefix_caching: bool | None = None, api_key: str | None = None,
                     model: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S,
                     progress: Callable[[str], None] = lambda _: None) -> list[ServiceTurn]:
    """Hold the conversation with the service at ``base_url`` (with or without ``/v1``)."""
    from openai import OpenAI

    label = run_label(prefix_caching)
    root = base_url.rstrip("/").removesuffix("/v1")  # either form of the URL works
    client = OpenAI(base_url=f"{root}/v1", api_key=api_key or "unused",
                    max_retries=0, timeout=timeout_s)
    try:
        model = model or served_model(client)
        messages = [{"role": "system", "content": conversation.system}]
        empty = dict.fromkeys(("ttft_s", "e2e_s", "prompt_tokens", "cached_tokens",
                               "completion_tokens"))
        turns: list[ServiceTurn] = []
        for number, user_text in enumerate(conversation.user_turns, start=1):
            messages.append({"role": "user", "content": user_text})
            try:
                reply, fields = _one_turn(client, model, messages, max_tokens)
                error = None
            except Exception as err:  # noqa: BLE001 -- a failure is a data point, not a crash
                reply, fields, error = "", empty, f"{type(err).__name__}: {err}"[:500]
            turns.append(ServiceTurn(run=label, prefix_caching=prefix_caching, turn=number,
                                     error=error, **fields))
            if error is not None:
                progress(f"[{label}] turn {number}: {error}; stopping this run")
                break
            messages.append({"role": "assistant", "content": reply})
            ttft = fields["ttft_s"]
            progress(f"[{label}] turn {number}/{len(conversation.user_turns)}: "
                     f"{fields['prompt_tokens']} prompt tokens, {fields['cached_tokens']} cached, "
                     f"TTFT {'-' if ttft is None else f'{ttft * 1e3:.0f} ms'}")
        return turns
    finally:
        client.close()


class RunningService(Protocol):
    @property
    def base_url(self) -> str: ...


class ServiceStarter(Protocol):
    """Starts one service for a block (``bench.service.ServiceProcess`` or a test fake)."""

    def __call__(self, *, config_path: Path, policy: str, port: int, log_path: Path,
                 start_timeout_s: float) -> AbstractContextManager[RunningService]: ...


def run_both(*, conversation: Conversation, max_tokens: int, out_dir: Path,
             start_timeout_s: float, model_source: str = "default",
             start: ServiceStarter | None = None,
             progress: Callable[[str], None] = lambda _: None) -> list[ServiceTurn]:
    """Start the service with the prefix cache on, then off; the conversation through each."""
    from bench.service import ServiceProcess, free_port, write_config

    starter: ServiceStarter = start or ServiceProcess
    turns: list[ServiceTurn] = []
    for prefix_caching in (True, False):
        label = run_label(prefix_caching)
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = write_config(folder / "config.yaml", model_id=SERVICE_MODEL_ID, policy="pow2",
                              replicas=1, port=port, metrics_port=free_port(),
                              ready_timeout_s=start_timeout_s,
                              enable_prefix_caching=prefix_caching, model_source=model_source)
        progress(f"[{label}] starting the service (cold; minutes on CPU)...")
        with starter(config_path=config, policy="pow2", port=port,
                     log_path=folder / "serve.log",
                     start_timeout_s=start_timeout_s + 60) as service:
            turns += run_conversation(base_url=service.base_url, conversation=conversation,
                                      max_tokens=max_tokens, prefix_caching=prefix_caching,
                                      model=SERVICE_MODEL_ID, progress=progress)
            progress(f"[{label}] stopping the service")
    return turns


def turns_by_run(turns: Sequence[ServiceTurn]) -> dict[str, list[ServiceTurn]]:
    out: dict[str, list[ServiceTurn]] = {}
    for t in turns:
        out.setdefault(t.run, []).append(t)
    return out

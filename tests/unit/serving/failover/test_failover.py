"""The failover loop on scripted fake replicas: retry, resume, hang, give up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorInfo,
    ErrorResponse,
)
from vllm.v1.engine.exceptions import EngineDeadError

from serving.failover.attempts import AttemptLog
from serving.config import FailoverConfig
from serving.failover.failover import Failover, classify
from serving.failover.metrics import FailureReason

KEY = "req-1"
HANG = object()  # script step: the replica stops answering


class FakeReplicas:
    """Answers attempt k with script k, and records it as the router would: attempt k
    went to replica f"r{k}"."""

    def __init__(self, attempts: AttemptLog, *scripts: list[Any]) -> None:
        self._attempts = attempts
        self._scripts = list(scripts)
        self.bodies: list[Any] = []

    def send(self, body: Any) -> AsyncIterator[Any]:
        index = len(self.bodies)
        self.bodies.append(body)
        self._attempts.record(KEY, f"r{index}")
        return self._run(index, self._scripts[index])

    async def _run(self, index: int, script: list[Any]) -> AsyncIterator[Any]:
        for step in script:
            if step is HANG:
                self._attempts.set_ejected(frozenset({f"r{index}"}))
                await asyncio.Event().wait()
            if isinstance(step, BaseException):
                raise step
            yield step


class Recorder:
    def __init__(self) -> None:
        self.retries: list[tuple[str, str]] = []
        self.resumed = 0
        self.failed: list[str] = []

    def on_retry(self, reason, phase) -> None:
        self.retries.append((str(reason), str(phase)))

    def on_resumed(self) -> None:
        self.resumed += 1

    def on_failed(self, reason: str) -> None:
        self.failed.append(reason)


async def no_sleep(_: float) -> None:
    return None


def make_failover(attempts: AttemptLog, recorder: Recorder, **config: Any) -> Failover:
    return Failover(FailoverConfig(**config), attempts=attempts, metrics=recorder,
                    sleep=no_sleep, poll_s=0.01)


def run(failover: Failover, body: Any, kind: str, replicas: FakeReplicas) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in failover.run(body, kind, replicas.send, request_key=KEY)]
    return asyncio.run(collect())


def chunk(text: str, tokens: int, *, id_: str = "t1", finish: str | None = None) -> list[str]:
    return [f"data: {json.dumps({'id': id_, 'object': 'text_completion', 'created': 1, 'model': 'm', 'choices': [{'index': 0, 'text': text, 'finish_reason': finish}], 'usage': {'prompt_tokens': 3, 'completion_tokens': tokens, 'total_tokens': 3 + tokens}})}\n\n"]


ERROR_CHUNK = ['data: {"error": {"message": "EngineCore encountered an issue.", '
               '"type": "InternalServerError", "param": null, "code": 500}}\n\n',
               "data: [DONE]\n\n"]
DONE = ["data: [DONE]\n\n"]


def engine_dead() -> BaseException:
    return RayTaskError("chat", "trace", EngineDeadError()).as_instanceof_cause()


def error_response(code: int) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=f"error {code}", type="x", code=code))


def stream_request(**fields: Any) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="Once", stream=True, max_tokens=10, **fields)


def texts(items: list[Any]) -> tuple[str, list[str]]:
    events = [e for item in items for e in item]
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events
                   if e.startswith("data: {") and json.loads(e[6:]).get("choices"))
    return text, events


def test_replica_death_classification() -> None:
    assert classify(ActorDiedError()) is FailureReason.REPLICA_DIED
    assert classify(engine_dead()) is FailureReason.ENGINE_ERROR
    assert classify(EngineDeadError()) is FailureReason.ENGINE_ERROR
    assert classify(RayTaskError("chat", "t", ValueError("bad")).as_instanceof_cause()) is None
    assert classify(ValueError("bad")) is None
    assert classify(RuntimeError("bug")) is None


def test_unary_request_retries_on_another_replica_after_a_death() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    body = CompletionRequest(model="m", prompt="Once", max_tokens=4)
    replicas = FakeReplicas(attempts, [ActorDiedError()], [error_response(500)], ["answer"])
    assert run(make_failover(attempts, recorder), body, "completions", replicas) == ["answer"]
    assert recorder.retries == [("replica_died", "before_output"),
                                ("engine_error", "before_output")]
    assert [b is body for b in replicas.bodies] == [True, True, True]
    assert len(attempts) == 0  # forgotten when the request ends


def test_each_retry_avoids_every_replica_that_failed_the_request() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    seen: list[frozenset[str]] = []

    class Watching(FakeReplicas):
        def send(self, body: Any) -> AsyncIterator[Any]:
            seen.append(attempts.avoided(KEY))
            return super().send(body)

    replicas = Watching(attempts, [engine_dead()], [engine_dead()], ["ok"])
    run(make_failover(attempts, recorder), CompletionRequest(model="m", prompt="x"),
        "completions", replicas)
    assert seen == [frozenset(), {"r0"}, {"r0", "r1"}]


def test_client_errors_are_not_retried() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(attempts, [error_response(400)])
    out = run(make_failover(attempts, recorder), CompletionRequest(model="m", prompt="x"),
              "completions", replicas)
    assert out[0].error.code == 400 and len(replicas.bodies) == 1 and not recorder.retries
    with pytest.raises(ValueError):
        run(make_failover(attempts, recorder), CompletionRequest(model="m", prompt="x"),
            "completions", FakeReplicas(attempts, [ValueError("bad")]))


def test_exhausted_attempts_hand_the_last_failure_to_the_client() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(attempts, [error_response(500)], [error_response(503)])
    out = run(make_failover(attempts, recorder, max_attempts=2),
              CompletionRequest(model="m", prompt="x"), "completions", replicas)
    assert out[0].error.code == 503 and recorder.failed == ["exhausted"]
    with pytest.raises(ActorDiedError):
        run(make_failover(attempts, Recorder(), max_attempts=1),
            CompletionRequest(model="m", prompt="x"), "completions",
            FakeReplicas(attempts, [ActorDiedError()]))


def test_stream_broken_mid_way_is_resumed_as_one_stream() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(
        attempts,
        [chunk(" upon", 1), chunk(" a", 2), ERROR_CHUNK],
        [chunk(" time", 1, id_="t2"), chunk(".", 2, id_="t2", finish="length"), DONE])
    out = run(make_failover(attempts, recorder), stream_request(), "completions", replicas)
    text, events = texts(out)
    assert text == " upon a time."
    assert events.count("data: [DONE]\n\n") == 1 and events[-1] == "data: [DONE]\n\n"
    assert all('"error"' not in e for e in events)
    assert replicas.bodies[1].prompt == "Once upon a" and replicas.bodies[1].max_tokens == 8
    assert recorder.retries == [("engine_error", "mid_stream")] and recorder.resumed == 1


def test_stream_failing_before_its_first_chunk_is_retried_as_is() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(attempts, [engine_dead()],
                            [chunk(" upon", 1, finish="length"), DONE])
    out = run(make_failover(attempts, recorder), stream_request(), "completions", replicas)
    assert texts(out)[0] == " upon" and replicas.bodies[1].prompt == "Once"
    assert recorder.retries == [("engine_error", "before_output")] and recorder.resumed == 0


def test_a_hung_replica_is_left_when_the_router_ejects_it() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(attempts, [chunk(" upon", 1), HANG],
                            [chunk(" a time", 2, id_="t2", finish="length"), DONE])
    out = run(make_failover(attempts, recorder), stream_request(), "completions", replicas)
    assert texts(out)[0] == " upon a time"
    assert recorder.retries == [("hung", "mid_stream")]


def test_a_stream_that_cannot_be_resumed_ends_with_an_error_chunk() -> None:
    attempts, recorder = AttemptLog(), Recorder()
    replicas = FakeReplicas(attempts, [chunk(" upon", 1), ActorDiedError()])
    out = run(make_failover(attempts, recorder), stream_request(n=2), "completions", replicas)
    _, events = texts(out)
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]\n\n"
    assert recorder.failed == ["not_resumable"] and len(replicas.bodies) == 1


def test_a_retry_is_not_taken_for_hung_before_the_router_placed_it() -> None:
    attempts, recorder = AttemptLog(), Recorder()

    class SlowRouter(FakeReplicas):
        """The retry's routing decision comes late (a busy router)."""

        def send(self, body: Any) -> AsyncIterator[Any]:
            if not self.bodies:
                return super().send(body)
            self.bodies.append(body)

            async def late() -> AsyncIterator[Any]:
                await asyncio.sleep(0.05)  # several hang-watch polls
                attempts.record(KEY, "r1")
                for item in [chunk(" a time", 2, id_="t2", finish="length"), DONE]:
                    yield item
            return late()

    replicas = SlowRouter(attempts, [chunk(" upon", 1), HANG])
    out = run(make_failover(attempts, recorder), stream_request(), "completions", replicas)
    assert texts(out)[0] == " upon a time"
    assert recorder.retries == [("hung", "mid_stream")]

"""kvbench's service part against a real loopback OpenAI-compatible server (a fake engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from bench.kv_conversation import make_conversation
from bench.kvbench import main as kvbench_main
from bench.kvbench_report import service_table
from bench.kvbench_service import (
    SERVICE_MODEL_ID,
    ServiceUnavailable,
    run_both,
    run_conversation,
)
from serving.config import load_config
from tests.unit.bench.kvbench_fake_server import MODEL_ID, FakeChatService, serve


def test_each_turn_sends_the_whole_history_and_records_ttft_and_cached_tokens() -> None:
    fake = FakeChatService(block_size=4, api_key="k-1")
    conversation = make_conversation(3)
    with serve(fake) as url:
        turns = run_conversation(base_url=url, conversation=conversation, max_tokens=5,
                                 prefix_caching=True, api_key="k-1")
    assert [t.turn for t in turns] == [1, 2, 3]
    assert all(t.error is None for t in turns)
    assert {t.run for t in turns} == {"prefix-caching-on"}
    # The first request has nothing to reuse; later ones reuse whole 4-word blocks.
    assert turns[0].cached_tokens == 0
    assert all(t.cached_tokens and t.cached_tokens % 4 == 0 for t in turns[1:])
    assert [t.prompt_tokens for t in turns] == sorted(t.prompt_tokens or 0 for t in turns)
    assert all(t.completion_tokens == 5 for t in turns)
    assert all(t.ttft_s is not None and t.e2e_s is not None and 0 <= t.ttft_s <= t.e2e_s
               for t in turns)

    # The model was taken from /v1/models; history grows by user + assistant each turn.
    assert [b["model"] for b in fake.bodies] == [MODEL_ID] * 3
    assert [len(b["messages"]) for b in fake.bodies] == [2, 4, 6]
    assert fake.bodies[2]["messages"][0] == {"role": "system", "content": conversation.system}
    assert fake.bodies[1]["messages"][2] == {"role": "assistant",
                                             "content": "w1.0 w1.1 w1.2 w1.3 w1.4"}
    assert [m["content"] for m in fake.bodies[2]["messages"] if m["role"] == "user"] \
        == list(conversation.user_turns)
    body = fake.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["min_tokens"] == 5
    assert set(fake.auth_headers) == {"Bearer k-1"}


def test_a_failed_turn_is_recorded_and_ends_the_run() -> None:
    fake = FakeChatService(fail_on_request=2)
    with serve(fake) as url:
        turns = run_conversation(base_url=f"{url}/v1/", conversation=make_conversation(4),
                                 max_tokens=3, model="m")
    assert [t.turn for t in turns] == [1, 2]
    assert turns[0].error is None and turns[0].run == "url" and turns[0].prefix_caching is None
    assert turns[1].error is not None and "500" in turns[1].error
    assert turns[1].ttft_s is None and turns[1].cached_tokens is None
    assert len(fake.bodies) == 2


def test_a_stream_without_usage_still_gives_ttft() -> None:
    with serve(FakeChatService(with_usage=False)) as url:
        [turn] = run_conversation(base_url=url, conversation=make_conversation(1),
                                  max_tokens=2, model="m")
    assert turn.error is None and turn.ttft_s is not None
    assert turn.prompt_tokens is None and turn.cached_tokens is None


def test_an_unreachable_service_is_one_clear_error() -> None:
    with serve(FakeChatService()) as url:
        pass  # stopped again: nothing listens on that port now
    with pytest.raises(ServiceUnavailable, match="cannot list models"):
        run_conversation(base_url=url, conversation=make_conversation(1), max_tokens=2,
                         timeout_s=5)


def test_run_both_starts_one_service_with_prefix_caching_on_then_one_with_it_off(
        tmp_path: Path) -> None:
    started: list[dict[str, object]] = []

    @contextmanager
    def fake_starter(*, config_path: Path, policy: str, port: int, log_path: Path,
                     start_timeout_s: float) -> Iterator[SimpleNamespace]:
        config = load_config(config_path)  # the file the real service would get
        started.append({"prefix_caching": config.engine.enable_prefix_caching,
                        "policy": policy, "replicas": config.replicas,
                        "port": config.server.port == port, "model_id": config.model.id})
        with serve(FakeChatService(prefix_caching=config.engine.enable_prefix_caching)) as url:
            yield SimpleNamespace(base_url=url)

    turns = run_both(conversation=make_conversation(3), max_tokens=4, out_dir=tmp_path,
                     start_timeout_s=60.0, start=fake_starter)
    assert started == [
        {"prefix_caching": True, "policy": "pow2", "replicas": 1, "port": True,
         "model_id": SERVICE_MODEL_ID},
        {"prefix_caching": False, "policy": "pow2", "replicas": 1, "port": True,
         "model_id": SERVICE_MODEL_ID}]
    on = [t for t in turns if t.prefix_caching]
    off = [t for t in turns if t.prefix_caching is False]
    assert [t.turn for t in on] == [t.turn for t in off] == [1, 2, 3]
    assert sum(t.cached_tokens or 0 for t in on) > 0
    assert all(t.cached_tokens == 0 for t in off)
    assert [t.prompt_tokens for t in on] == [t.prompt_tokens for t in off]

    table = service_table(turns).splitlines()
    assert table[0] == ("| turn | prompt tokens | cached tokens (prefix-caching-on) | "
                        "TTFT ms (prefix-caching-on) | cached tokens (prefix-caching-off) | "
                        "TTFT ms (prefix-caching-off) |")
    assert len(table) == 2 + 3


def test_cli_url_mode_writes_json_table_and_chart(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    # Without --api-key the service's own key variable is used.
    monkeypatch.setenv("CACHEROUTE_API_KEYS", " k-env ,k-other")
    fake = FakeChatService(api_key="k-env")
    with serve(fake) as url:
        code = kvbench_main(["--no-local", "--url", url, "--prefix-caching", "off",
                             "--turns", "2", "--new-tokens", "3", "--out-dir", str(out),
                             "--json", str(tmp_path / "k.json")])
    assert code == 0
    data = json.loads((tmp_path / "k.json").read_text())
    assert data["records"] == []
    assert [(r["run"], r["prefix_caching"], r["turn"]) for r in data["service_records"]] \
        == [("prefix-caching-off", False, 1), ("prefix-caching-off", False, 2)]
    assert (out / "kvbench.png").stat().st_size > 0
    assert "cached tokens (prefix-caching-off)" in (out / "kvbench.md").read_text()
    assert set(fake.auth_headers) == {"Bearer k-env"}


def test_service_config_carries_prefix_caching_and_an_odd_model_path(tmp_path: Path) -> None:
    from bench.service import write_config

    source = str(tmp_path / "my models: v2" / "smol")
    path = write_config(tmp_path / "c.yaml", model_id="m", policy="pow2", replicas=1,
                        port=18123, metrics_port=18124, ready_timeout_s=60.0,
                        enable_prefix_caching=False, model_source=source)
    config = load_config(path)
    assert config.engine.enable_prefix_caching is False
    assert config.model.source == source
    assert load_config(write_config(tmp_path / "d.yaml", model_id="m", policy="cacheroute",
                                    replicas=1, port=1, metrics_port=2, ready_timeout_s=1.0)
                       ).engine.enable_prefix_caching is True

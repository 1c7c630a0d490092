"""Peer routers in `cacheroute bench`: policy names, engine and router command lines built
from the service's own engine arguments, the pinned venv, engine-side metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import live, peers
from bench.policy_run import PolicyRun
from bench.service import write_config
from bench.service_metrics import RunCounters, diff, engine_snapshot
from serving.config import load_config
from serving.replica.engine_args import engine_env, engine_kwargs

MODEL = "/models/smollm2"


def config_of(tmp_path: Path, **engine):
    """A config written and read as `cacheroute bench` does for the service."""
    path = write_config(tmp_path / "config.yaml", model_id="smollm2-135m-instruct",
                        policy="pow2", replicas=2, port=8000, metrics_port=8001,
                        ready_timeout_s=60, **engine)
    return load_config(path)


def flag_values(command: list[str]) -> dict[str, str | bool]:
    """``--flag value`` pairs of a command line (a bare flag maps to True)."""
    out: dict[str, str | bool] = {}
    for k, word in enumerate(command):
        if word.startswith("--"):
            nxt = command[k + 1] if k + 1 < len(command) else None
            out[word] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


# ---------------------------------------------------------------- policy names

def test_policies_accept_peers_beside_cacheroute_policies() -> None:
    args = live.build_parser().parse_args(
        ["--policies", ("cacheroute,vllm-router:kv_aware,vllm-router:consistent_hash,"
                        "sglang:cache_aware")])
    assert args.policies == ["cacheroute", "vllm-router:kv_aware",
                             "vllm-router:consistent_hash", "sglang:cache_aware"]


def test_unknown_peer_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        live.build_parser().parse_args(["--policies", "cacheroute,vllm-router:nope"])
    assert "vllm-router:nope" in capsys.readouterr().err


def test_peer_names_and_catalogue() -> None:
    assert peers.is_peer("sglang:cache_aware") and not peers.is_peer("cacheroute")
    assert all(peers.is_peer(name) for name in peers.PEERS)
    assert all(p.package in peers.PACKAGES for p in peers.PEERS.values())
    assert peers.peer("vllm-router:kv_aware").describe() == {
        "package": "vllm-router", "version": "0.1.17", "policy": "kv_aware", "kv_events": True}
    with pytest.raises(KeyError, match="known"):
        peers.peer("nginx:round_robin")


# ---------------------------------------------------------------- engines

@pytest.mark.parametrize("engine", [
    {},
    {"max_model_len": 2048, "kv_cache_gib": 2, "max_num_seqs": 3},
])
def test_engine_command_carries_the_service_engine_arguments(tmp_path: Path, engine) -> None:
    config = config_of(tmp_path, **engine)
    kwargs = engine_kwargs(config, MODEL)
    command = peers.engine_command(config, MODEL, port=8101, python="/venv/bin/python")
    flags = flag_values(command)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flags["--model"] == MODEL
    assert flags["--served-model-name"] == config.model.id
    assert flags["--port"] == "8101"
    assert flags["--block-size"] == str(kwargs["block_size"]) == str(config.engine.block_size)
    assert flags["--max-model-len"] == str(kwargs["max_model_len"])
    assert flags["--max-num-seqs"] == str(kwargs["max_num_seqs"])
    assert flags["--prefix-caching-hash-algo"] == kwargs["prefix_caching_hash_algo"]
    assert flags["--enable-prefix-caching"] is True
    assert flags["--enable-prompt-tokens-details"] is True
    assert flags["--dtype"] == kwargs["dtype"]
    assert "--kv-events-config" not in flags
    if engine:
        assert (flags["--max-model-len"], flags["--max-num-seqs"]) == ("2048", "3")
    # KV cache size and hash seed come through the environment, as for the replicas.
    env = peers.engine_environment(config)
    assert env == engine_env(config)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(config.engine.kv_cache_gib)
    assert env["PYTHONHASHSEED"] == str(config.engine.hash_seed)


def test_engine_without_prefix_caching_says_so(tmp_path: Path) -> None:
    config = config_of(tmp_path, enable_prefix_caching=False)
    flags = flag_values(peers.engine_command(config, MODEL, port=1))
    assert flags["--no-enable-prefix-caching"] is True
    assert "--enable-prefix-caching" not in flags


def test_engine_publishes_kv_events_when_asked(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    flags = flag_values(peers.engine_command(config, MODEL, port=8101, kv_events_port=5571))
    assert json.loads(str(flags["--kv-events-config"])) == {
        "enable_kv_cache_events": True, "publisher": "zmq",
        "endpoint": "tcp://127.0.0.1:5571", "topic": peers.KV_EVENTS_TOPIC}


def test_engine_flags_spell_values() -> None:
    assert peers.engine_flags({"a_b": 1, "on": True, "off": False, "none": None,
                               "cfg": {"x": 1}}) == [
        "--a-b", "1", "--on", "--no-off", "--cfg", '{"x": 1}']


# ---------------------------------------------------------------- routers

WORKERS = ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]


def test_vllm_router_kv_aware_subscribes_to_each_engine(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    venv = Path("/v")
    command = peers.router_command(peers.PEERS["vllm-router:kv_aware"], venv, port=8000,
                                   prometheus_port=9000, worker_urls=WORKERS,
                                   kv_event_ports=[5571, 5572],
                                   block_size=config.engine.block_size, model_path=MODEL)
    assert command[0] == "/v/bin/vllm-router"
    flags = flag_values(command)
    assert (flags["--policy"], flags["--port"], flags["--prometheus-port"]) == (
        "kv_aware", "8000", "9000")
    assert command[command.index("--worker-urls") + 1:][:2] == WORKERS
    sources = [command[k + 1] for k, w in enumerate(command) if w == "--kv-event-source"]
    assert sources == [f"{WORKERS[0]}=tcp://127.0.0.1:5571", f"{WORKERS[1]}=tcp://127.0.0.1:5572"]
    assert flags["--kv-event-block-size"] == str(engine_kwargs(config, MODEL)["block_size"])
    assert flags["--kv-event-model"] == MODEL
    with pytest.raises(ValueError):
        peers.router_command(peers.PEERS["vllm-router:kv_aware"], venv, port=1,
                             prometheus_port=2, worker_urls=WORKERS, kv_event_ports=[5571],
                             block_size=128, model_path=MODEL)


def test_other_peers_take_no_kv_events() -> None:
    venv = Path("/v")
    hashed = peers.router_command(peers.PEERS["vllm-router:consistent_hash"], venv, port=8000,
                                  prometheus_port=9000, worker_urls=WORKERS, block_size=128,
                                  model_path=MODEL)
    assert flag_values(hashed)["--policy"] == "consistent_hash"
    assert "--kv-event-source" not in hashed
    sglang = peers.router_command(peers.PEERS["sglang:cache_aware"], venv, port=8000,
                                  prometheus_port=9000, worker_urls=WORKERS, block_size=128,
                                  model_path=MODEL)
    assert sglang[:3] == ["/v/bin/python", "-m", "sglang_router.launch_router"]
    assert flag_values(sglang)["--policy"] == "cache_aware"
    assert "--kv-event-source" not in sglang


# ---------------------------------------------------------------- venv

def test_requirements_are_the_pins() -> None:
    assert peers.requirements() == ["sglang-router==0.3.2", "vllm-router==0.1.17"]


def test_venv_is_built_once_with_the_pins(tmp_path: Path) -> None:
    venv = tmp_path / "peers-venv"
    calls: list[list[str]] = []

    def run(command: list[str], check: bool) -> None:
        assert check
        calls.append(command)
        if command[1:3] == ["-m", "venv"]:
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").write_text("")

    assert peers.ensure_venv(venv, python="/py", run=run, progress=lambda _: None) == venv
    assert calls[0] == ["/py", "-m", "venv", str(venv)]
    assert calls[1][:3] == [str(venv / "bin" / "python"), "-m", "pip"]
    assert calls[1][-2:] == ["sglang-router==0.3.2", "vllm-router==0.1.17"]
    calls.clear()
    peers.ensure_venv(venv, python="/py", run=run, progress=lambda _: None)
    assert calls == []  # pins already there
    (venv / peers.PINS_FILE).write_text("vllm-router==0.1.16\n")
    peers.ensure_venv(venv, python="/py", run=run, progress=lambda _: None)
    assert len(calls) == 1 and calls[0][-1] == "vllm-router==0.1.17"  # updated, not recreated


# ---------------------------------------------------------------- metrics

def engine_metrics(hits: float, queries: float, ok: float, running: float) -> str:
    return f"""# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {hits}
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {queries}
# TYPE vllm:request_success counter
vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} {ok}
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} 1.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} 1.0
"""


def test_engine_snapshot_reads_plain_vllm_servers() -> None:
    before = engine_snapshot({"engine-1": engine_metrics(0, 10, 1, 0),
                              "engine-2": engine_metrics(0, 10, 1, 0)})
    after = engine_snapshot({"engine-1": engine_metrics(30, 110, 5, 2),
                             "engine-2": engine_metrics(20, 110, 3, 0)})
    assert after.in_flight == {"engine-1": 3.0, "engine-2": 1.0}
    counters = diff(before, after)
    assert counters.engine_hit_rate == pytest.approx(50 / 200)
    assert counters.requests_by_replica == {"engine-1": 4.0, "engine-2": 2.0}
    # cacheroute's router counters do not exist in front of a peer: not measured.
    assert (counters.spills, counters.decisions, counters.replications,
            counters.spill_waits) == (None, None, None, None)
    assert counters.engine_prompt_hit_rate is None


def test_peer_fields_only_for_peers() -> None:
    counters = RunCounters(engine_hit_rate=None, engine_prompt_hit_rate=None,
                           prefix_cache_queries=0.0, requests_by_replica={}, spills=None,
                           decisions=None)
    common = {"outcome": [], "counters": counters, "load": [], "load_skew": None,
              "request_skew": None, "startup_s": None, "stragglers_killed": 0}
    assert PolicyRun(policy="cacheroute", **common).peer_fields() == {}
    described = peers.PEERS["sglang:cache_aware"].describe()
    assert PolicyRun(policy="sglang:cache_aware", peer=described, **common).peer_fields() == {
        "peer": {"package": "sglang-router", "version": "0.3.2", "policy": "cache_aware",
                 "kv_events": False}}


# ---------------------------------------------------------------- the runner

def test_peer_run_starts_engines_then_router_and_stops_all(tmp_path: Path, monkeypatch) -> None:
    """The runner's flow with the processes and HTTP faked: engines with KV events for a
    kv_aware peer, the router in front of them, everything stopped, the peer recorded."""
    from bench import peer_run
    from bench.policy_run import ServiceSettings

    started: list[str] = []
    stopped: list[str] = []

    class FakeProcess(peer_run.PeerProcess):
        def spawn(self):  # type: ignore[no-untyped-def]
            started.append(self.policy)
            self.commanded = self.command

        def wait_ready(self) -> None:
            self.startup_s = 0.0

        def stop(self) -> None:
            stopped.append(self.policy)

    made: list[FakeProcess] = []

    def make(**kwargs):  # type: ignore[no-untyped-def]
        made.append(FakeProcess(**kwargs))
        return made[-1]

    monkeypatch.setattr(peer_run, "PeerProcess", make)
    monkeypatch.setattr(peers, "ensure_venv", lambda: tmp_path / "venv")
    monkeypatch.setattr("serving.models.source.resolve_model_source",
                        lambda config, progress: MODEL)
    monkeypatch.setattr(peer_run, "first_completion", lambda *a, **k: (0.0, ""))
    monkeypatch.setattr(peer_run, "settled", lambda _url, fetch: fetch(""))
    snapshots = iter([engine_metrics(0, 10, 1, 0), engine_metrics(5, 20, 3, 1)] * 50)
    monkeypatch.setattr(peer_run, "_engines_fetch", lambda names: lambda _: engine_snapshot(
        {name: next(snapshots) for name in names}))

    run = peer_run.run_peer_measured("vllm-router:kv_aware", ServiceSettings(),
                                     tmp_path / "run", lambda url: url)
    assert run.outcome.startswith("http://127.0.0.1:")
    engines, router = made[:2], made[2]
    assert all("--kv-events-config" in e.command for e in engines)
    assert all(e.env["VLLM_CPU_KVCACHE_SPACE"] == "1" for e in engines)
    assert router.command[router.command.index("--worker-urls") + 1:][:2] == [
        e.base_url for e in engines]
    assert started == [e.policy for e in made] and sorted(stopped) == sorted(started)
    assert stopped[0] == router.policy  # the router first
    assert run.peer is not None and run.peer["version"] == "0.1.17"
    assert run.counters.spills is None
    saved = json.loads((tmp_path / "run" / "service_metrics.json").read_text())
    assert saved["peer"]["package"] == "vllm-router" and saved["decisions"] is None

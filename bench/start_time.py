"""How long `cacheroute serve` takes to be ready, and where the time goes.

    python -m bench.start_time --runs 3                      # cold first run, then warm
    python -m bench.start_time --runs 2 --without-compile-cache

Each run starts the service exactly as a user does (bench/service.py: `cacheroute
serve`, the default model, the given number of replicas), waits for its ready line
(printed once every replica has served a warm-up generation), and stops it. Per run:

- ``ready_s``: process start to the ready line, what a user waits;
- ``engine_init_s``: each engine's own "init engine (profile, create kv cache, warmup
  model) took X s", read from the run's Ray worker logs;
- ``compiled`` / ``loaded``: engines that compiled the model, and engines that loaded
  the compiled model saved by an earlier start (vLLM logs "saved AOT compiled
  function" and "Directly load AOT compilation" respectively).

The first run uses an empty vLLM cache (``VLLM_CACHE_ROOT`` in a fresh folder): a new
machine's first start. Later runs reuse that cache: a restart. With
``--without-compile-cache`` vLLM loads only this project's stat logger
(``VLLM_PLUGINS=cacheroute``), not the plugin that lets a CPU engine load its saved
compile (serving/replica/compile_cache.py): the start as it was before that plugin.

Writes a result file (bench/results.py, benchmark ``start_time``). Cost: one service
start and stop per run (seconds to minutes each), nothing else.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from bench.results import write_result
from bench.service import ServiceProcess, free_port, write_config

MODEL_ID = "smollm2-135m-instruct"
_INIT = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")
_COMPILED = "saved AOT compiled function"
_LOADED = "Directly load AOT compilation"
_LOAD_FAILED = "Compiling model again due to a load failure"


def engine_log_facts(log_dir: Path, since: float) -> dict[str, Any]:
    """What the engines of one run logged: init seconds, compiles, loads. ``since``: the
    run's start (epoch s); older files belong to earlier runs."""
    inits: list[float] = []
    compiled = loaded = failed = 0
    for path in sorted(log_dir.glob("worker-*")) if log_dir.is_dir() else []:
        if path.stat().st_mtime < since:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        inits += [float(v) for v in _INIT.findall(text)]
        compiled += text.count(_COMPILED)
        loaded += text.count(_LOADED)
        failed += text.count(_LOAD_FAILED)
    return {"engine_init_s": inits, "compiled": compiled, "loaded": loaded,
            "load_failures": failed}


def run_once(*, replicas: int, work: Path, env: dict[str, str], label: str,
             timeout_s: float) -> dict[str, Any]:
    port = free_port()
    config = write_config(work / f"{label}.yaml", model_id=MODEL_ID, policy="cacheroute",
                          replicas=replicas, port=port, metrics_port=free_port(),
                          ready_timeout_s=timeout_s)
    since = time.time()
    service = ServiceProcess(config_path=config, policy="cacheroute", port=port,
                             log_path=work / f"{label}.log", start_timeout_s=timeout_s,
                             env=env)
    with service:
        ready_s = service.startup_s
    # Ray keeps its sessions under <RAY_TMPDIR>/ray/.
    facts = engine_log_facts(Path(env["RAY_TMPDIR"]) / "ray" / "session_latest" / "logs", since)
    init = facts["engine_init_s"]
    print(f"{label}: ready in {ready_s:.1f} s; engine init {init} s; "
          f"compiled {facts['compiled']}, loaded {facts['loaded']}", file=sys.stderr)
    return {"run": label, "ready_s": ready_s,
            "engine_init_max_s": max(init) if init else None, **facts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.start_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3,
                        help="starts in a row; the first with an empty vLLM cache")
    parser.add_argument("--without-compile-cache", action="store_true",
                        help="vLLM without serving/replica/compile_cache.py (the start before it)")
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    args = parser.parse_args(argv)
    command = "python -m bench.start_time " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="cacheroute-start-") as tmp:
        work = Path(tmp)
        # A short Ray temp folder of its own: the run's worker logs, apart from any other
        # Ray on the machine (and short enough for Ray's socket paths).
        env = {"VLLM_CACHE_ROOT": str(work / "vllm-cache"), "RAY_TMPDIR": str(work / "ray")}
        if args.without_compile_cache:
            env["VLLM_PLUGINS"] = "cacheroute"  # the stat logger's name only
        rows = [run_once(replicas=args.replicas, work=work, env=env, timeout_s=args.timeout_s,
                         label=f"{i + 1} ({'cold' if i == 0 else 'warm'})")
                for i in range(args.runs)]
    workload = f"{args.replicas}-replicas" + ("-without-compile-cache"
                                              if args.without_compile_cache else "")
    write_result("start_time", workload, command=command, machine=machine_info(),
                 parameters={"replicas": args.replicas, "runs": args.runs,
                             "model": MODEL_ID,
                             "compile_cache_plugin": not args.without_compile_cache},
                 results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reading one run's engine facts from Ray's worker logs (bench/start_time.py)."""

from __future__ import annotations

import os

from bench.start_time import engine_log_facts

COMPILE = ("(Worker pid=1) INFO [decorators.py:743] [backbone] saved AOT compiled function to "
           "/c/model\n(EngineCore pid=2) INFO [core.py:402] init engine (profile, create kv "
           "cache, warmup model) took 64.20 s\n")
LOAD = ("(Worker pid=3) INFO [decorators.py:319] [backbone] Directly load AOT compilation "
        "from path /c/model\n(EngineCore pid=4) INFO [core.py:402] init engine (profile, "
        "create kv cache, warmup model) took 7.20 s\n")
FAILED = ("(Worker pid=5) WARNING [decorators.py:333] [backbone] Compiling model again due to "
          "a load failure from /c/model, reason: x\n")


def test_facts_count_each_engine_once_and_skip_older_runs(tmp_path):
    (tmp_path / "worker-a.err").write_text(COMPILE)
    (tmp_path / "worker-b.err").write_text(LOAD + FAILED)
    old = tmp_path / "worker-old.err"
    old.write_text(COMPILE)
    os.utime(old, (1000.0, 1000.0))
    (tmp_path / "raylet.out").write_text(COMPILE)  # not a worker's log
    facts = engine_log_facts(tmp_path, since=2000.0)
    assert sorted(facts["engine_init_s"]) == [7.2, 64.2]
    assert (facts["compiled"], facts["loaded"], facts["load_failures"]) == (1, 1, 1)


def test_no_log_folder_means_no_facts(tmp_path):
    assert engine_log_facts(tmp_path / "absent", since=0.0) == {
        "engine_init_s": [], "compiled": 0, "loaded": 0, "load_failures": 0}

"""`cacheroute drill NAME`: a fault under load, measured.

    cacheroute drill kill-replica --json out/drills/kill-replica.json
    cacheroute drill hang-replica --url http://127.0.0.1:8000 --hang-s 20
    cacheroute drill scale-down --url http://127.0.0.1:8000 --ray-address 127.0.0.1:6379

Without ``--url`` the drill starts a stack of its own (``--replicas``, cold) and
stops it afterwards; with ``--url`` it targets a running service on this machine
(loopback only) and finds its Ray cluster from the process serving the port
unless ``--ray-address`` names it. Writes the JSON report (``--json``), a PNG
timeline next to it, and a Markdown summary on stdout. Exit status: 0 when the
drill ran (whatever it found; ``--fail-on-goals`` makes a missed goal 1), 1 when
it could not run, 2 for bad arguments (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from chaos.faults import DRILLS, KILL_TARGETS
from chaos.load import LoadSpec
from chaos.report import Windows, markdown

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class UsageError(Exception):
    """A bad argument: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cacheroute drill", description=__doc__.split("\n\n")[0])
    p.add_argument("drill", metavar="NAME", choices=DRILLS,
                   help=f"one of: {', '.join(DRILLS)}")
    p.add_argument("--json", type=Path, help="report path (default out/drills/NAME.json); "
                                             "the PNG timeline is written beside it")
    target = p.add_argument_group("target (default: a stack of the drill's own)")
    target.add_argument("--url", help="a running service on this machine, e.g. "
                                      "http://127.0.0.1:8000")
    target.add_argument("--ray-address", help="its Ray GCS address HOST:PORT "
                                              "(default: found from the --url port)")
    target.add_argument("--api-key", help="the service's API key, if it needs one")
    target.add_argument("--replicas", type=int, default=2, help="own stack: LLM replicas")
    target.add_argument("--start-timeout-s", type=float, default=900.0)
    fault = p.add_argument_group("fault")
    fault.add_argument("--fault-at-s", type=float, default=40.0,
                       help="seconds of load before the fault")
    fault.add_argument("--recovery-timeout-s", type=float, default=480.0,
                       help="a CPU engine on 2 cores took 2-7 min to start")
    fault.add_argument("--target", choices=KILL_TARGETS, default="engine",
                       help="kill-replica: the vLLM engine core or the replica actor")
    fault.add_argument("--hang-s", type=float, default=20.0, help="hang-replica: stop time")
    fault.add_argument("--no-restore", action="store_true",
                       help="scale drills: leave the new replica count in place")
    load = p.add_argument_group("load (seeded and bounded)")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--max-requests", type=int, default=2000)
    load.add_argument("--max-duration-s", type=float, default=600.0)
    load.add_argument("--concurrency", type=int, default=3)
    load.add_argument("--tenants", type=int, default=4)
    load.add_argument("--max-tokens", type=int, default=24)
    load.add_argument("--after-window-s", type=float, default=30.0,
                      help="hit-rate window after recovery (the goal's time limit)")
    p.add_argument("--fail-on-goals", action="store_true",
                   help="exit 1 when a goal is missed")
    return p


def options_from(args: argparse.Namespace) -> Any:
    """The runner's options; raises ValueError for values out of range."""
    from chaos.runner import DrillOptions

    crash = args.drill == "crash-mid-stream"
    spec = LoadSpec(seed=args.seed, max_requests=args.max_requests,
                    max_duration_s=args.max_duration_s, concurrency=args.concurrency,
                    tenants=args.tenants, max_tokens=args.max_tokens,
                    # Long streams in flight when the engine dies: what the drill is about.
                    stream_fraction=0.7 if crash else 0.5,
                    long_stream_fraction=1.0 if crash else 0.0)
    if not args.after_window_s > 0:
        raise ValueError(f"--after-window-s must be > 0, got {args.after_window_s}")
    return DrillOptions(drill=args.drill, load=spec,
                        windows=Windows(after_window_s=args.after_window_s),
                        fault_at_s=args.fault_at_s, recovery_timeout_s=args.recovery_timeout_s,
                        target=args.target, hang_s=args.hang_s, restore=not args.no_restore,
                        ready_timeout_s=min(300.0, args.start_timeout_s))


def check_target(args: argparse.Namespace) -> None:
    if args.url is None:
        if args.ray_address is not None:
            raise UsageError("--ray-address goes with --url")
        if args.replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {args.replicas}")
        if args.drill == "scale-down" and args.replicas < 2:
            raise UsageError("scale-down needs --replicas 2 or more")
        return
    url = urlparse(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--url must look like http://127.0.0.1:8000, got {args.url!r}")
    if url.hostname not in LOOPBACK_HOSTS:
        raise UsageError(f"--url must be a loopback address (drills signal local "
                         f"processes), got {url.hostname}")


class _Progress:
    """A tqdm bar on stderr, opened at the drill's first phase (after a stack of its
    own has started, so the start-up lines do not cut through it)."""

    def __init__(self, drill: str, total: int) -> None:
        self._drill = drill
        self._total = total
        self._bar: Any = None
        self._failed = 0

    def _open(self) -> Any:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, unit="req", desc=self._drill, file=sys.stderr)
        return self._bar

    def on_record(self, record: Any) -> None:
        bar = self._open()
        self._failed += 0 if record.ok else 1
        bar.set_postfix_str(f"failed {self._failed}", refresh=False)
        bar.update(1)

    def on_phase(self, phase: str) -> None:
        self._open().set_description_str(f"{self._drill}: {phase}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from bench.service import ServiceError
    from chaos.cluster import ClusterError, discover_ray_address
    from chaos.runner import DrillError, StackTarget, run_drill

    options = options_from(args)
    json_path = args.json or Path("out/drills") / f"{args.drill}.json"
    progress = _Progress(args.drill, args.max_requests)
    on_record, on_phase = progress.on_record, progress.on_phase
    try:
        if args.url is not None:
            base = args.url.rstrip("/")
            address = args.ray_address or discover_ray_address(base_url=base)
            report = run_drill(StackTarget(base_url=base, ray_address=address,
                                           api_key=args.api_key),
                               options, on_record=on_record, on_phase=on_phase)
        else:
            from chaos.stack import local_stack

            with local_stack(json_path.parent / f"{args.drill}-stack", replicas=args.replicas,
                             start_timeout_s=args.start_timeout_s) as target:
                report = run_drill(target, options, on_record=on_record, on_phase=on_phase)
    except (DrillError, ClusterError, ServiceError) as err:
        progress.close()
        print(f"cacheroute drill: {err}", file=sys.stderr)
        return 1
    progress.close()
    report["command"] = shlex.join(["cacheroute", "drill", *argv])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written = [json_path]
    try:
        from chaos.plot import write_timeline

        written.append(write_timeline(json_path.with_suffix(".png"), report))
    except ImportError:
        print("cacheroute drill: no timeline (pip install matplotlib)", file=sys.stderr)
    print(markdown(report))
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 1 if args.fail_on_goals and not report["passed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        check_target(args)
        options_from(args)  # range errors surface here, before anything starts
    except (UsageError, ValueError) as err:
        print(f"cacheroute drill: error: {err}", file=sys.stderr)
        return 2
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())

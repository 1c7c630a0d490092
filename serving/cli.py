"""`cacheroute` command line. Every failure the user can fix prints one line and exits 2."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from serving.config import POLICIES, ConfigError, load_config


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.cluster import cluster_address
    from serving.runtime import base_url, run_service
    from serving.tenants.identity import Tenants

    config = load_config(args.config).with_overrides(
        replicas=args.replicas, policy=args.policy, port=args.port, model_source=args.model)
    try:
        tenants = Tenants.from_config(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # Before anything starts: an operator sees at once whether callers are kept apart.
    print(f"cacheroute: {tenants.describe()}", flush=True)

    def on_ready(info: dict) -> None:
        print(f"cacheroute: ready at {base_url(config)}/v1 -- {info.get('replicas_ready')} "
              f"replica(s) of {config.model.id} warm, policy {config.routing.policy}; "
              f"metrics at {info.get('metrics_url')}", flush=True)

    run_service(config, on_ready=on_ready, address=cluster_address(args.address),
                progress=lambda m: print(f"cacheroute: {m}", flush=True))
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from serving.models.source import resolve_model_source

    config = load_config(args.config)
    print(resolve_model_source(config, progress=lambda m: print(f"cacheroute: {m}",
                                                                 file=sys.stderr, flush=True)))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    if args.reference:
        from serving.config import reference_markdown

        print(reference_markdown(), end="")
        return 0
    config = load_config(args.config)
    print(config.model_dump_json(indent=2))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from serving.observability.status import run

    return run(args)


def _cmd_render(args: argparse.Namespace) -> int:
    from serving.deploy.render import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from serving.deploy.render import add_arguments as add_render_arguments

    parser = argparse.ArgumentParser(prog="cacheroute", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service until interrupted")
    serve.add_argument("--config", help="YAML config (default: the shipped default)")
    serve.add_argument("--replicas", type=int, help="override `replicas`")
    serve.add_argument("--policy", choices=POLICIES, help="override `routing.policy`")
    serve.add_argument("--port", type=int, help="override `server.port`")
    serve.add_argument("--model", help="override `model.source` (folder or hub name)")
    serve.add_argument("--address", help="deploy onto the existing Ray cluster at this "
                                         "address (GCS HOST:PORT, or `auto`) instead of "
                                         "starting a local Ray head; default: $RAY_ADDRESS "
                                         "when set (docs/operations/deploy.md)")
    serve.set_defaults(func=_cmd_serve)

    model = sub.add_parser("model", help="build (if needed) and print the configured model's path")
    model.add_argument("--config")
    model.set_defaults(func=_cmd_model)

    check = sub.add_parser("config", help="validate a config file and print it with defaults")
    check.add_argument("--config")
    check.add_argument("--reference", action="store_true",
                       help="print the Markdown reference of every field instead")
    check.set_defaults(func=_cmd_check_config)
    # Listed for --help; main() hands `bench ...` to bench.live before parsing.
    sub.add_parser("bench", help="compare routing policies on the live service "
                                 "(`cacheroute bench --help` for its options)")
    # Listed for --help; main() hands `sim ...` to bench.sim.cli before parsing.
    sub.add_parser("sim", help="compare routing policies on simulated engines, up to "
                               "thousands of replicas (`cacheroute sim --help`)")
    # Listed for --help; main() hands `drill ...` to chaos.cli before parsing.
    sub.add_parser("drill", help="a fault (kill, hang, crash, restart, scale) under a "
                                 "bounded load, measured (`cacheroute drill --help`)")
    # Listed for --help; main() hands `kvbench ...` to bench.kvbench before parsing.
    sub.add_parser("kvbench", help="what the KV cache costs and saves, per turn, with "
                                   "transformers and the service (`cacheroute kvbench --help`)")

    status = sub.add_parser("status", help="table of the running service's replicas: hit rate, "
                                           "KV usage, queue, owned prefixes, health")
    from serving.observability.status import add_arguments as add_status_arguments

    add_status_arguments(status)
    status.set_defaults(func=_cmd_status)

    render = sub.add_parser("render", help="write serve-config.yaml, rayservice.yaml and Helm "
                                           "values.yaml for Kubernetes from a config file")
    add_render_arguments(render)
    render.set_defaults(func=_cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark owns its options (and --help); pass them through untouched.
        from bench.live import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["sim"]:
        from bench.sim.cli import main as sim_main

        return sim_main(argv[1:])
    if argv[:1] == ["kvbench"]:
        from bench.kvbench import main as kvbench_main

        return kvbench_main(argv[1:])
    if argv[:1] == ["drill"]:
        from chaos.cli import main as drill_main

        return drill_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"cacheroute: config error: {err}", file=sys.stderr)
        return 2
    except (TimeoutError, RuntimeError) as err:
        print(f"cacheroute: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A stack of the drill's own: ``cacheroute serve`` started cold and stopped completely.

The local stack every tool shares (``bench.service``: a subprocess in its own
session, ready when it prints its ready line, every process it started tagged and
ended afterwards), run as ``python -m serving.cli`` from the drill's own code, with
the ``cacheroute`` policy and no API key. The Ray address comes from the serve
process's own raylet (``cluster.discover_ray_address``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.service import (
    ServiceProcess,
    code_root,
    free_port,
    serve_module_command,
    write_config,
)
from chaos.cluster import discover_ray_address
from chaos.runner import StackTarget

MODEL_ID = "smollm2-135m-instruct"


@contextmanager
def local_stack(folder: Path, *, replicas: int, policy: str = "cacheroute",
                start_timeout_s: float = 900.0) -> Iterator[StackTarget]:
    """Raises ``bench.service.ServiceError`` when the service does not come up."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(folder / "config.yaml", model_id=MODEL_ID, policy=policy,
                          replicas=replicas, port=port, metrics_port=free_port(),
                          ready_timeout_s=start_timeout_s)
    service = ServiceProcess(config_path=config, policy=policy, port=port,
                             log_path=folder / "serve.log", start_timeout_s=start_timeout_s + 60,
                             command=serve_module_command(config, policy), cwd=code_root())
    print(f"cacheroute drill: starting {replicas} replica(s) (cold; minutes on CPU), "
          f"log {folder / 'serve.log'}", file=sys.stderr, flush=True)
    with service:
        print(f"cacheroute drill: service ready after {service.startup_s:.0f} s at "
              f"{service.base_url}", file=sys.stderr, flush=True)
        address = discover_ray_address(base_url=service.base_url, root_pid=service.pid)
        yield StackTarget(base_url=service.base_url, ray_address=address, model=MODEL_ID)
        print("cacheroute drill: stopping the service", file=sys.stderr, flush=True)

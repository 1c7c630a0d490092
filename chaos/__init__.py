"""Chaos drills: a fault under a bounded, seeded load, and what the client saw.

    from chaos import DrillOptions, StackTarget, run_drill
    report = run_drill(StackTarget(base_url=..., ray_address=..., api_key=...),
                       DrillOptions(drill="kill-replica"))

Modules, one concept each: ``load`` (request plan and closed-loop senders),
``stream_check`` (broken-stream rules), ``cluster`` (the service's Ray cluster:
replicas, processes, scaling), ``faults`` (one class per drill and its recovery
condition), ``sampler`` (readiness and replicas once a second), ``service_probe``
(``/ready`` and failover counters), ``ring_churn`` (keys moved on the router's
ring), ``report`` and ``plot`` (numbers, Markdown, PNG), ``runner`` (the
sequence), ``stack`` (a stack of the drill's own), ``cli`` (``cacheroute drill``).
Importing this package does not import Ray.
"""

from chaos.faults import DRILLS
from chaos.load import LoadSpec
from chaos.report import Windows
from chaos.runner import DrillError, DrillOptions, StackTarget, run_drill

__all__ = ["DRILLS", "DrillError", "DrillOptions", "LoadSpec", "StackTarget", "Windows",
           "run_drill"]

"""The Ray Serve config of the service: the `cacheroute` application and its autoscaling.

`render_serve_config` is KubeRay's `serveConfigV2` (or `serve deploy` input): the
application built by `serving.app:app_builder` from `args.config`, the very same
schema as the local config file, with an optional autoscaling override of the
engine deployment. Pure data; it imports no Ray, so it is cheap to run anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from serving.config import ConfigError, ServiceConfig

JSON = dict[str, Any]

# The Serve application (serving/app.py: APP_NAME, app_builder). Kept literal here so
# rendering never imports Ray; tests compare them with serving.app.
APP_NAME = "cacheroute"
IMPORT_PATH = "serving.app:app_builder"
ROUTE_PREFIX = "/"


@dataclass(frozen=True)
class Autoscaling:
    """Serve autoscaling of the engine deployment, floor = `config.replicas`.

    The floor is the config's `replicas` because `/ready` waits for that many warm
    replicas; the worker group scales between the same bounds (one engine per pod).
    """

    max_replicas: int
    target_ongoing_requests: float = 8.0
    idle_timeout_s: int = 300

    def check(self, config: ServiceConfig) -> None:
        if self.max_replicas < config.replicas:
            raise ConfigError(f"autoscaling: max_replicas ({self.max_replicas}) is below "
                              f"replicas ({config.replicas})")
        if self.target_ongoing_requests <= 0:
            raise ConfigError("autoscaling: target_ongoing_requests must be > 0")
        if self.idle_timeout_s < 0:
            raise ConfigError("autoscaling: idle_timeout_s must be >= 0")


def llm_deployment_name(config: ServiceConfig) -> str:
    return config.llm_deployment_name()


def render_serve_config(config: ServiceConfig, *, autoscaling: Autoscaling | None = None) -> JSON:
    """The Serve config document (KubeRay's `serveConfigV2`)."""
    app: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": ROUTE_PREFIX,
        "import_path": IMPORT_PATH,
        "args": {"config": config.model_dump(mode="json")},
    }
    if autoscaling is not None:
        autoscaling.check(config)
        # A Serve config override of the deployment that app_builder builds with a
        # fixed num_replicas: "auto" switches it to the autoscaler with these bounds.
        app["deployments"] = [{
            "name": llm_deployment_name(config),
            "num_replicas": "auto",
            "autoscaling_config": {
                "min_replicas": config.replicas,
                "max_replicas": autoscaling.max_replicas,
                "target_ongoing_requests": autoscaling.target_ongoing_requests,
            },
        }]
    return {
        "http_options": {"host": "0.0.0.0", "port": config.server.port},
        "applications": [app],
    }


def serve_config_text(serve_config: JSON) -> str:
    text: str = yaml.safe_dump(serve_config, sort_keys=False, default_flow_style=False)
    return text

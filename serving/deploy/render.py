"""`cacheroute render`: Kubernetes artefacts from the service config, one source of truth.

    python -m serving.deploy.render --config my.yaml --out deploy/   # (wired as `cacheroute render`)

writes three files from one validated `ServiceConfig`:

* `serve-config.yaml` -- the Ray Serve config (serving/deploy/serve_config.py).
* `rayservice.yaml` -- a complete KubeRay `RayService` (serving/deploy/rayservice.py).
* `values.yaml` -- Helm values for `helm/cacheroute` holding the same config
  (serving/deploy/helm_values.py).

It imports no Ray or vLLM, so it is cheap to run anywhere. Bad input is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from serving.config import ConfigError, load_config
from serving.deploy.helm_values import render_helm_values
from serving.deploy.rayservice import (
    APP_VERSION,
    DEFAULT_IMAGE_REPOSITORY,
    SecretRef,
    default_image,
    render_rayservice,
)
from serving.deploy.serve_config import (
    Autoscaling,
    render_serve_config,
    serve_config_text,
)


def _secret_arg(text: str | None, what: str) -> SecretRef | None:
    if not text:
        return None
    name, sep, key = text.partition(":")
    if not name or (sep and not key):
        raise ConfigError(f"--{what}: expected SECRET or SECRET:KEY, got {text!r}")
    return SecretRef(name, key or ("HF_TOKEN" if what == "hf-token-secret" else "api-keys"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `cacheroute render` (serving/cli.py adds them to its subcommand)."""
    p.add_argument("--config", help="YAML config (default: the shipped default)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--name", default="cacheroute", help="RayService name (default: cacheroute)")
    p.add_argument("--image", help="image with a pinned tag (default: "
                   f"{DEFAULT_IMAGE_REPOSITORY}:{APP_VERSION}-<engine.device>)")
    p.add_argument("--max-replicas", type=int,
                   help="enable autoscaling between `replicas` and this many replicas")
    p.add_argument("--target-ongoing-requests", type=float, default=8.0,
                   help="autoscaling target per replica (default 8)")
    p.add_argument("--hf-token-secret", metavar="SECRET[:KEY]",
                   help="existing Secret holding HF_TOKEN (key default HF_TOKEN)")
    p.add_argument("--api-keys-secret", metavar="SECRET[:KEY]",
                   help="existing Secret holding the comma-separated API keys "
                        "(key default api-keys)")
    p.add_argument("--cache-claim", metavar="PVC",
                   help="existing PersistentVolumeClaim (ReadWriteMany) for /cache, so new "
                        "pods load the compile cache and model (default: an emptyDir)")


def run(args: argparse.Namespace) -> int:
    """Render and write the three files; raises ConfigError on bad input."""
    config = load_config(args.config)
    autoscaling = None
    if args.max_replicas is not None:
        autoscaling = Autoscaling(args.max_replicas, args.target_ongoing_requests)
    hf = _secret_arg(args.hf_token_secret, "hf-token-secret")
    keys = _secret_arg(args.api_keys_secret, "api-keys-secret")
    image = args.image or default_image(config)
    serve_cfg = render_serve_config(config, autoscaling=autoscaling)
    rayservice = render_rayservice(config, name=args.name, image=image,
                                   autoscaling=autoscaling, hf_token=hf, api_keys=keys,
                                   cache_claim=args.cache_claim)
    repo, _, tag = image.rpartition(":")
    values = render_helm_values(config, image_tag=tag, autoscaling=autoscaling,
                                hf_token=hf, api_keys=keys, cache_claim=args.cache_claim)
    values["image"]["repository"] = repo
    files = {
        "serve-config.yaml": serve_config_text(serve_cfg),
        "rayservice.yaml": yaml.safe_dump(rayservice, sort_keys=False),
        "values.yaml": "# helm install cacheroute helm/cacheroute -f values.yaml\n"
                       + yaml.safe_dump(values, sort_keys=False),
    }
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (out / fname).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from None
    for fname in files:
        print(out / fname)
    return 0


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)  # one line and exit 2, like every other error


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="cacheroute render",
                     description="Render serve-config.yaml, rayservice.yaml and Helm "
                                 "values.yaml from a config file.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except _ArgError as err:
        print(f"cacheroute render: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"cacheroute render: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

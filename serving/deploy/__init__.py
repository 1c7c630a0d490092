"""Kubernetes artefacts rendered from the service config (runs in the CLI): the Serve
config, the RayService and the Helm values."""

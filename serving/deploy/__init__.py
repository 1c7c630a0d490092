"""Kubernetes artefacts rendered from the service config (runs in the CLI): the Serve
config (``serve_config``), the RayService (``rayservice``) and the Helm values and chart
schema (``helm_values``); ``render`` is ``cacheroute render``. No Ray imports."""

"""Telemetry (runs in the ingress process): the `/metrics` endpoint, request tracing, and
`cacheroute status`, which reads both from outside."""

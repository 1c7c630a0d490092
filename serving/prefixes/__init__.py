"""The prefix registry (runs in the ingress process): registered prompt heads, their
store (in process or Redis), prewarm and the HTTP API."""

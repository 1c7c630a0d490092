"""Failover of chat and completion requests (runs in the ingress process): retries,
mid-stream resume, the attempt log shared with the router, and their metrics."""

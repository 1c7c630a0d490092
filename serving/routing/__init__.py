"""Ray Serve request routers (run inside the ingress process, on Serve's router event loop):
the `cacheroute` adapter over the pure core in `router/` (cacheroute.py, translation only)
and the parts it drives: prompt tokens (route_requests.py), the core's waits parked on the
event loop (parking.py), hang ejection, KV-event subscribers, prewarm and replication
jobs, replicas' routing stats; plus the baseline policies, in-flight counts and metrics."""

"""Ray Serve request routers (run inside the ingress process, on Serve's router event loop):
the `cacheroute` adapter over the pure core in `router/`, the baseline policies, prompt
tokenising, in-flight counts, slot waiting, scale-up prewarm jobs and the router's metrics."""

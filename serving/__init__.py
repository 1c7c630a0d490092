"""Serving layer of cacheroute: Ray Serve application, vLLM engines and model folders."""

"""The engine replica (runs in each Serve replica process): `ray.serve.llm`'s LLMServer
warmed before it counts as running, and the engine's stats and progress reports."""

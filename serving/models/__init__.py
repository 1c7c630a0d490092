"""Model folders the service can serve without a model hub (runs in the CLI, before Ray
starts): the embedded default model, built once from a package."""

"""Model folders the service can serve without a model hub (runs in the CLI, before Ray
starts): the embedded default model, built once from a package.

Modules: ``default`` (the default model: fetch, convert, paths), ``folder`` (a build
renamed into place with a marker, under a lock), ``hf_folder`` (config and tokenizer
files every loader reads alike), ``cli`` (``python -m serving.models``).
"""

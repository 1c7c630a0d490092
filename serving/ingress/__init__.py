"""The HTTP ingress (runs in the ingress replica process): the OpenAI API, auth, limits,
request models, OpenAI-shaped errors and the corrected OpenAPI document."""

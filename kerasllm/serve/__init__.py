"""Serving and chatting: `engine` (continuous batching over a run's cached decoder, one slot per request), `app` (the
OpenAI-compatible HTTP API on FastAPI; its request bodies in `bodies`, prompt scoring in `scoring`, `/metrics` in
`metrics`), `launch` (the server's lifecycle) and `session` (a conversation kept within the
model's context, and the terminal chat loop). This wing never imports `kerasllm.train` or `kerasllm.recipes`.
"""

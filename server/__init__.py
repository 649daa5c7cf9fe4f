"""Hearth's HTTP layer: an OpenAI-compatible API over the `engine` package (Starlette + uvicorn).

`server.app.create_app(Settings(...))` builds the ASGI app; `python -m server` runs it.
Nothing is imported here, so `server.schemas` and `server.errors` load without torch.
"""

"""Hearth's HTTP layer: an OpenAI-compatible API over the `engine` package (Starlette + uvicorn).

`server.app.create_app(Settings(...))` builds the ASGI app; `python -m server` runs it.
Nothing is imported here, so `server.openai.schemas` and `server.http.errors` load without torch.
"""

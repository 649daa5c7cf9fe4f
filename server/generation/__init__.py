"""A generation request's way through the server, one module per step, shared by every surface:

read (body, choices, model) -> params (budget, sampling fields) -> submit (to the engine, first
delta) -> collect (the n choices, or the checked stream) -> respond (JSON, or SSE through a Render).
"""

"""The `hearth` command: serve, models, add, chat (a terminal client of a running server), bench."""

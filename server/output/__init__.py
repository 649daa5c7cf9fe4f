"""Shaping and reading a model's output, shared by every surface: tool prompts, tool and reasoning
grammars, the streaming parser for text/reasoning/tool calls, `response_format`."""

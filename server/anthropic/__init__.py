"""The Anthropic Messages surface: schemas, translation onto the chat path, the named-event stream,
Anthropic's error shape, and its routes."""

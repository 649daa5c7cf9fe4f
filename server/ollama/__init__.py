"""The Ollama API (`/api/*`): schemas, translation onto the chat path, NDJSON streaming, Ollama's
error shape, the model listing routes, and its routes."""

"""The HTTP core shared by every API surface: auth, body reading, request context, drain, errors,
limits, metrics, SSE framing and the health routes."""

"""Driving the engine for one HTTP request, for every surface: resolve the model, submit, collect or
stream the deltas, answer."""

"""The OpenAI surface: chat and legacy completions, their schemas, logprobs and the mapping of
sampling fields onto the engine's `SamplingParams`; `/v1/models`."""

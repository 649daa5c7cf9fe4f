"""One step's logits to tokens: pure filter functions, penalties, logprobs, grammars and the sampler
that applies them row by row."""

"""The model side: loading (GGUF conversion, quantization), the runner (the only code that touches
the model), the lean forward, attention over the KV cache, packed/quantized linears, graphs and traces."""

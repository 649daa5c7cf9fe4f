"""Embedding models: pooling read from sentence-transformers files, a dynamic batcher, the `Embedder`."""

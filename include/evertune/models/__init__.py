"""Model resolution and bootstrap: the base LLM, the embedder, and the tiny test model."""

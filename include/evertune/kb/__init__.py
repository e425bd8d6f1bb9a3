"""The knowledge base: ingest, validate, chunk, embed, index, evaluate and publish."""

"""The Dagster-free core: settings, errors, videos, decoding, models, the embedding
engine and the vector stores. Nothing under here imports dagster, the orchestration
layer or the CLI (import-linter contracts, checked by a test); torch, open_clip,
transformers, decoders and pymilvus are imported lazily."""

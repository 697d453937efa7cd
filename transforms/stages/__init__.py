"""The pipeline's stages: read, validate, dedup, pack, call, write (and the call timeline)."""

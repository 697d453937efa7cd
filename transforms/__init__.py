"""Beam transforms of the embedding job, one concern a module."""

"""Consentry's web layer, CLI, storage and stage pipeline."""

__version__ = "0.1.0"

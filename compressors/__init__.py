"""Compressor stages, one per module; `registry.STAGES` maps recipe names to classes."""

"""Bundled example models: a small CNN for the 8x8 digits and its trained weights."""

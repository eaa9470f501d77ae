"""Bundled data sets: `digits.npz`, the 8x8 UCI handwritten digits, split train/eval."""

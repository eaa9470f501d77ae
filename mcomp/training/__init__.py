"""The one training loop and what it trains against (distillation, sparsity masks)."""

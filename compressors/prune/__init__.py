"""The `prune` stage: magnitude, channel, layer and gradual pruning, sensitivity."""

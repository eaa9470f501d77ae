"""The cores of the companion commands: bench, compare, inspect, eval, sensitivity."""

"""Example recipes shipped with mcomp; `mcomp run quickstart` finds them by name."""

"""The `mcomp` command line: the only package that imports click and rich."""

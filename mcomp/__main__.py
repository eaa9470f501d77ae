"""`python -m mcomp` runs the command line (also what torchrun launches)."""

from mcomp.cli.main import main

main()

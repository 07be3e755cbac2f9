"""Run ddmctl as `python -m ddmctl`, the same as its console script."""

from ddmctl.cli import main

main()

"""Run ddminit as `python -m ddminit`, the same as its console script."""

from ddminit.cli import main

main()

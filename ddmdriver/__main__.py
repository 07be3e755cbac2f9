"""Run ddmdriver as `python -m ddmdriver`, the same as its console script."""

from ddmdriver.cli import main

main()

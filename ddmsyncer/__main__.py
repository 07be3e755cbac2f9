"""Run ddmsyncer as `python -m ddmsyncer`, the same as its console script."""

from ddmsyncer.cli import main

main()

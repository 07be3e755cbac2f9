"""Run ddmverify as `python -m ddmverify`, the same as its console script."""

from ddmverify.cli import main

main()

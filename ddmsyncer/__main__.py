"""Run ddmsyncer as `python -m ddmsyncer`, the same as its console script."""

from ddmsyncer.cli import main

# The guard keeps a plain import (tools that import every module) from running the command.
if __name__ == "__main__":
    main()

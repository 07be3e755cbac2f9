"""Run ddmctl as `python -m ddmctl`, the same as its console script."""

from ddmctl.cli import main

# The guard keeps a plain import (tools that import every module) from running the command.
if __name__ == "__main__":
    main()

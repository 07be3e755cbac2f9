"""Run ddminit as `python -m ddminit`, the same as its console script."""

from ddminit.cli import main

# The guard keeps a plain import (tools that import every module) from running the command.
if __name__ == "__main__":
    main()

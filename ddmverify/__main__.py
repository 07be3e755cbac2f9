"""Run ddmverify as `python -m ddmverify`, the same as its console script."""

from ddmverify.cli import main

# The guard keeps a plain import (tools that import every module) from running the command.
if __name__ == "__main__":
    main()

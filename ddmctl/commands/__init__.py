"""Subcommands of ddmctl, one module per subcommand family."""

"""One module per CLI command (see hugexml.cli.COMMANDS)."""

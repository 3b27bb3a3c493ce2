"""Command-line option values both programs share (pure data, no I/O)."""

# logging's level names (logging/__init__.py _nameToLevel, less the aliases); anything else is refused by argparse
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

"""Command-line option values both programs share (pure data, no I/O)."""

# logging's level names (logging/__init__.py _nameToLevel, less the aliases); anything else is refused by argparse
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def number_type(kind, low, *, above: bool = False, high=None, what: str = "", finite: bool = False):
    """An argparse type: `kind` (int or float) ≥ `low` (> `low` when `above`) and ≤ `high` when given; NaN
    never passes (every comparison with it is False), nor ±inf when `finite`. Raises ArgumentTypeError."""
    import argparse
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if value != value or (finite and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (value <= low if above else value < low) or (high is not None and value > high):
            bound = f"more than {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}{f' and at most {high:g}' if high else ''}"
                                             f"{f' ({what})' if what else ''}")
        return value
    return parse

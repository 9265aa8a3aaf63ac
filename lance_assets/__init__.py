"""Keep Lance datasets compact by binary copy, from Python, the terminal or Dagster."""

__version__ = "0.1.0"

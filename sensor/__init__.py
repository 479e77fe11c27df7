"""sensor: a Linux host-visibility agent that runs SQL queries about the machine."""

__version__ = "0.1.0"

"""sensor: a Linux host-visibility agent that answers SQL about the machine."""

__version__ = "0.1.0"

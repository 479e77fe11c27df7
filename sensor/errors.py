"""The error hierarchy: one base class and one subclass per boundary."""

__all__ = ["SensorError", "ConfigError", "QueryError", "PublisherError"]


class SensorError(Exception):
    """Base class of every error that sensor reports to a user in one line."""


class ConfigError(SensorError):
    """The configuration file is missing, unreadable or invalid."""


class QueryError(SensorError):
    """A SQL statement failed to prepare or run."""


class PublisherError(SensorError):
    """A kernel event source failed to open or read."""

"""Errors that the CLI turns into one clear line and a non-zero exit."""


class FedBatError(Exception):
    """Base class: a user-facing problem (bad config, missing or corrupt data)."""


class ConfigError(FedBatError, ValueError):
    """A setting is unknown or out of range."""


class DataError(FedBatError):
    """A dataset is missing, truncated or fails its checksum."""

"""The one extension mechanism: every choice a setting names is a ``Registry`` of named entries.

    MODELS = Registry("model", {"cnn4": CNN4, "logreg": "fedbat_jax.models.logreg:LogReg"})
    MODELS["cnn4"]        # the entry; a "module:attr" string is imported on first use
    MODELS["cnn5"]        # ConfigError: unknown model 'cnn5'; choose one of: cnn4, logreg

A new algorithm, compressor, model, dataset, augmentation, backend, server optimizer, learning-rate schedule or
error-feedback form is one file plus one line in its registry. ``fedbat_jax.config`` reads the
registries: the names a setting accepts, its ``--help`` line, and the settings an entry brings with it. An entry's
settings are ``Setting`` records, each with the ``values`` it accepts (a field of the algorithm's and compressor's
records; ``@declares(...)`` on a function or class entry), and its ``check(config)`` says what one value cannot
(two settings together). Every entry's settings and check apply whether or not the entry is the active one::

    @declares(Setting("crop_pad", 4, "crop_flip: pixels of zero padding", NON_NEGATIVE))
    def crop_flip(key, images): ...
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from fedbat_jax.errors import ConfigError


class Range(NamedTuple):
    """The numbers a setting accepts: ``low <= v`` (``<`` with ``low_open``) and ``v <= high`` (``<`` with
    ``high_open``); ``None`` is unbounded. ``str(Range(0, 1, high_open=True))`` is ``in [0, 1)``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v) -> bool:
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


# The ranges most settings use.
POSITIVE = Range(1)  # an integer >= 1 ("a positive integer")
NON_NEGATIVE = Range(0)
ABOVE_ZERO = Range(0, low_open=True)
UNIT = Range(0, 1, high_open=True)  # a decay or a momentum: [0, 1)
FRACTION = Range(0, 1)  # [0, 1]


class Setting(NamedTuple):
    """One setting: its name, default (which fixes its type), what it means (the ``--help`` line) and the values
    it accepts: a ``Range``, a tuple of choices, or ``None`` (any value of its type)."""

    name: str
    default: Any
    help: str
    values: Range | tuple | None = None

    def check(self, value: Any) -> None:
        """A one-line ConfigError where ``value`` is not one this setting accepts."""
        if isinstance(self.values, Range) and value not in self.values:
            integer = isinstance(self.default, int) and not isinstance(self.default, bool)
            what = "a positive integer" if self.values == POSITIVE and integer else self.values
            raise ConfigError(f"{self.name} must be {what}, got {value!r}")
        if isinstance(self.values, tuple) and not isinstance(self.values, Range) and value not in self.values:
            if isinstance(self.default, str):
                raise ConfigError(f"unknown {self.name} {value!r}; choose one of: {', '.join(self.values)}")
            raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.values))}, got {value!r}")


def declares(*settings: Setting, check: Callable[[Any], None] | None = None):
    """Mark a function or class registry entry with the settings it brings and its ``check(config)`` (the
    algorithms' and compressors' records carry both as fields)."""
    def mark(entry):
        entry.settings, entry.check = tuple(settings), check
        return entry
    return mark


def owned(entry: Any) -> tuple[tuple[Setting, ...], Callable[[Any], None] | None]:
    """An entry's ``(settings, check)``: what it declares, or ``((), None)``."""
    settings = getattr(entry, "settings", ())
    if not (isinstance(settings, tuple) and all(isinstance(s, Setting) for s in settings)):
        return (), None
    check = getattr(entry, "check", None)
    return settings, check if callable(check) else None


class Registry(dict):
    """A dict of named entries whose unknown names are a one-line ``ConfigError``, and whose entries may be
    given lazily as ``"module:attr"`` (imported when first looked up)."""

    def __init__(self, kind: str, entries: dict[str, Any]):
        super().__init__(entries)
        self.kind = kind

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self))}")
        entry = super().__getitem__(name)
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self[name] = entry
        return entry

    def entries(self) -> list[tuple[str, Any]]:
        """``[(name, entry)]`` in registration order, every entry loaded."""
        return [(name, self[name]) for name in list(self)]

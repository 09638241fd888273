"""The one extension mechanism: every choice a setting names is a ``Registry`` of named entries.

    MODELS = Registry("model", {"cnn4": CNN4, "logreg": "fedbat_jax.models.logreg:LogReg"})
    MODELS["cnn4"]        # the entry; a "module:attr" string is imported on first use
    MODELS["cnn5"]        # ConfigError: unknown model 'cnn5'; choose one of: cnn4, logreg

A new algorithm, compressor, model, dataset, augmentation, backend, server optimizer, learning-rate schedule or
error-feedback form is one file plus one line in its registry. ``fedbat_jax.config`` reads the registries: the
names a setting accepts, its ``--help`` line, and the settings an entry brings with it (``Setting`` records in the
entry's ``settings`` field, checked by the entry's ``check(config)``).
"""
from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from fedbat_jax.errors import ConfigError


class Setting(NamedTuple):
    """One setting: its name, default (which fixes its type) and what it means (the ``--help`` line)."""

    name: str
    default: Any
    help: str


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

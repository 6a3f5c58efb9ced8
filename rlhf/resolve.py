"""User code named in the config ('package.module:function'), imported with errors that name
the config key: a reward function, a policy loss."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from rlhf.errors import ConfigError


def resolve_function(path: str, key: str) -> Callable:
    """Import 'pkg.mod:fn' or 'pkg.mod.fn'. Raises ConfigError naming `key` when it fails."""
    mod_name, sep, attr = path.partition(":")
    if not sep:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ConfigError(key, f"{path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # an import error in user code is a config error, reported early
        raise ConfigError(key, f"cannot import module {mod_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(key, f"{mod_name!r} has no callable {attr!r}")
    return fn

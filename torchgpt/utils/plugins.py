"""Name -> module lookup for the seams: `NAME` is the module PACKAGE.NAME and its SPEC.

Used by torchgpt/optim/registry.py (optimizer.name) and torchgpt/step/spec.py (model.name):
the module is imported only when its name is asked for, and the package is listed only to
name the choices in an error or for --help.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any


def _spec_of(module: ModuleType, spec_type: type) -> Any | None:
    spec = getattr(module, "SPEC", None)
    return spec if isinstance(spec, spec_type) else None


def available(package: ModuleType, spec_type: type) -> list[str]:
    """The modules of `package` that define SPEC of `spec_type`, by name."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if _spec_of(importlib.import_module(f"{package.__name__}.{info.name}"), spec_type)
    )


def lookup(package: ModuleType, spec_type: type, name: str, *, key: str, what: str) -> Any:
    """PACKAGE.NAME's SPEC.

    Raises:
        ValueError: no such module or no SPEC in it; the message names `key` and the choices.
    """
    try:
        spec = _spec_of(importlib.import_module(f"{package.__name__}.{name}"), spec_type)
    except ModuleNotFoundError:
        spec = None
    if spec is not None:
        return spec
    folder = package.__name__.replace(".", "/")
    raise ValueError(
        f"{key}: unknown {what} {name!r}; available: "
        f"{', '.join(available(package, spec_type))} (a {what} is {folder}/NAME.py defining "
        f"SPEC = {spec_type.__name__}(...))"
    )

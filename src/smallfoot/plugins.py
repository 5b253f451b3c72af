"""The technique modules that register methods and models when imported.

The registries (``smallfoot.methods``, ``smallfoot.models``) sit below the techniques that
fill them, so they cannot import them; they call :func:`load_plugins` instead, which imports
each module named here by name. This list is the one place that knows every technique; a new
technique adds its module here.
"""

from __future__ import annotations

import importlib

TECHNIQUE_MODULES: tuple[str, ...] = (
    "smallfoot.facto.method",
    "smallfoot.layerwise.method",
    "smallfoot.manifold.method",
    "smallfoot.closedform.method",
    "smallfoot.subspace.method",
    "smallfoot.reversible.method",
    "smallfoot.alternatives",
    "smallfoot.distributed.partition_method",
)

_loaded = False


def load_plugins() -> None:
    """Import every module of :data:`TECHNIQUE_MODULES` once (they register themselves)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in TECHNIQUE_MODULES:
            importlib.import_module(module)

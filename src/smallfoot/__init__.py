"""smallfoot: train deep networks in a fraction of the memory plain backpropagation needs.

The public pieces live in sub-packages: ``smallfoot.data``, ``smallfoot.models``,
``smallfoot.train``, ``smallfoot.memory``, ``smallfoot.methods`` and one package per
technique (``smallfoot.reversible``, ``smallfoot.lowrank``, ...). ``smallfoot.plan(model,
example_input, budget)`` answers which of them train a model in a memory budget (the module
``smallfoot.plan`` is callable as its function ``plan``).
"""

__version__ = "0.1.0"

from smallfoot import plan as plan  # noqa: E402  (a callable module; after __version__)

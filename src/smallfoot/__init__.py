"""smallfoot: train deep networks in a fraction of the memory plain backpropagation needs.

The public pieces live in sub-packages: ``smallfoot.data``, ``smallfoot.models``,
``smallfoot.train``, ``smallfoot.memory``, ``smallfoot.methods`` and one package per
technique (``smallfoot.reversible``, ``smallfoot.facto``, ...). ``smallfoot.plan(model,
example_input, budget)`` answers which of them train a model in a memory budget (the module
``smallfoot.plan`` is callable as its function ``plan``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``smallfoot.plan`` loads on first use: importing smallfoot (or any of its low layers)
    # must not import every technique, the runner and the planner with it
    if name == "plan":
        import importlib

        return importlib.import_module("smallfoot.plan")
    raise AttributeError(f"module 'smallfoot' has no attribute {name!r}")

"""smallfoot: train deep networks in a fraction of the memory plain backpropagation needs.

The public pieces live in sub-packages: ``smallfoot.data``, ``smallfoot.models``,
``smallfoot.train``, ``smallfoot.memory``, ``smallfoot.methods`` and one package per
technique (``smallfoot.reversible``, ``smallfoot.lowrank``, ...).
"""

__version__ = "0.1.0"

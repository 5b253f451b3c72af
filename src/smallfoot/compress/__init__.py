"""Entropy-quantised parameter packages (thesis chapter 3): the codec only, no process logic.

``encode(w, name)`` quantises a layer to ``N = round(H) + c`` bits (``H`` estimated from a sample
quantised to ``M`` bits) and range-codes it with ``constriction``; ``decode(package)`` returns
exactly ``quantise(w)``. ``encode_state``/``decode_state`` do the same for a dict of tensors.
"""

from smallfoot.compress.codec import (
    MAX_BITS,
    CodecConfig,
    CompressionError,
    PackageInfo,
    bits_per_parameter,
    choose_bits,
    decode,
    decode_state,
    encode,
    encode_state,
    estimate_entropy,
    quantise,
    read_info,
    split_state,
)

__all__ = [
    "MAX_BITS",
    "CodecConfig",
    "CompressionError",
    "PackageInfo",
    "bits_per_parameter",
    "choose_bits",
    "decode",
    "decode_state",
    "encode",
    "encode_state",
    "estimate_entropy",
    "quantise",
    "read_info",
    "split_state",
]

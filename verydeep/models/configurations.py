"""The paper's Table 1 as data.

Each configuration is a list of layer specs: an int ``c`` is a 3x3 conv (pad 1) with ``c``
output channels, ``(1, c)`` a 1x1 conv (net C's extra layers), ``"M"`` a 2x2/2 max-pool closing
a block and ``"LRN"`` local response normalization (net A-LRN only, after the first conv).
Adding a configuration is one line.
"""

from __future__ import annotations

LayerSpec = int | tuple[int, int] | str

CONFIGURATIONS: dict[str, list[LayerSpec]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M",
          512, 512, (1, 512), "M", 512, 512, (1, 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

# The paper's LRN setting (AlexNet's): size 5, alpha 1e-4, beta 0.75, k 2, in Krizhevsky's formula
# k + alpha * sum of squares (verydeep.models.lrn; torch's and Caffe's layers use alpha / size).
LRN_PARAMS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

# Hidden width of the two FC layers (FC-4096) and the spatial size that FC1 sees at 224x224.
FC_FEATURES = 4096
HEAD_SIZE = 7


def conv_specs(config: str) -> list[tuple[int, int, int]]:
    """(block, kernel, out_channels) for every conv of a configuration, in order."""
    block, out = 0, []
    for spec in CONFIGURATIONS[config]:
        if spec == "M":
            block += 1
        elif spec == "LRN":
            continue
        elif isinstance(spec, tuple):
            out.append((block, spec[0], spec[1]))
        else:
            out.append((block, 3, int(spec)))
    return out

"""oqat: Once Quantization-Aware Training (OQAT, ICCV 2021) in PyTorch.

`oqat.cost(arch, space, bits)` is the cost function (its module stays importable as
`oqat.cost` through `from oqat.cost import ...`).
"""
from .files import load_oqa_checkpoint
from .space import SPACES, Arch, SearchSpace, get_space
from .subnet import Subnet
from .supernet import Supernet

# isort: split
from .cost import cost  # last, deliberately: shadows the submodule attribute (oqat.cost(...))

__all__ = ["Arch", "SearchSpace", "SPACES", "get_space", "Supernet", "Subnet", "load_oqa_checkpoint", "cost"]
__version__ = "0.1.0"

"""oqat: Once Quantization-Aware Training (OQAT, ICCV 2021) in PyTorch.

`oqat.arch_metrics(arch, space, bits)` gives an architecture's cost metrics (module `oqat.cost`).
"""
from .cost import arch_metrics
from .files import load_oqa_checkpoint
from .space import SPACES, Arch, SearchSpace, get_space
from .subnet import Subnet
from .supernet import Supernet

__all__ = ["Arch", "SearchSpace", "SPACES", "get_space", "Supernet", "Subnet", "load_oqa_checkpoint", "arch_metrics"]
__version__ = "0.1.0"

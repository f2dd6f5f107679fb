"""oqat: Once Quantization-Aware Training (OQAT, ICCV 2021) in PyTorch."""
from .space import SPACES, Arch, SearchSpace, get_space
from .supernet import Supernet
from .subnet import Subnet

__all__ = ["Arch", "SearchSpace", "SPACES", "get_space", "Supernet", "Subnet"]
__version__ = "0.1.0"

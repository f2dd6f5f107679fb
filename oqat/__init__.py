"""oqat: Once Quantization-Aware Training (OQAT, ICCV 2021) in PyTorch.

`oqat.arch_metrics(arch, space, bits)` gives an architecture's cost metrics (module `oqat.cost`);
`net, fields = oqat.load_model(path)` opens any network file or export folder, and
`oqat.subnet_arch(net, arch, path)` the subnet an architecture chooses in it.
"""
from . import data, evaluate, files  # the README's `oqat.files.open_supernet(...)`, `oqat.evaluate.evaluate(...)`
from .cost import arch_metrics
from .files import load_model, load_oqa_checkpoint, subnet_arch
from .space import SPACES, Arch, SearchSpace, get_space
from .subnet import Subnet
from .supernet import Supernet

__all__ = ["data", "evaluate", "files",
           "Arch", "SearchSpace", "SPACES", "get_space", "Supernet", "Subnet", "load_model", "load_oqa_checkpoint",
           "subnet_arch", "arch_metrics"]
__version__ = "0.1.0"

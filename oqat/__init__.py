"""oqat: Once Quantization-Aware Training (OQAT, ICCV 2021) in PyTorch.

`oqat.arch_metrics(arch, space, bits)` gives an architecture's cost metrics (module `oqat.nets.cost`);
`net, fields = oqat.load_model(path)` opens any network file or export folder, and
`oqat.subnet_arch(net, arch, path)` the subnet an architecture chooses in it.
"""
from . import data, files  # the README's `oqat.files.open_supernet(...)`, `oqat.data.eval_batches(...)`
from .files.checkpoints import load_model, load_oqa_checkpoint, subnet_arch
from .nets.cost import arch_metrics
from .nets.subnet import Subnet
from .nets.supernet import Supernet
from .space.arch import Arch
from .space.builtin import SPACES, get_space
from .space.structure import SearchSpace
from .train import evaluate  # the README's `oqat.evaluate.evaluate(...)`

__all__ = ["data", "evaluate", "files",
           "Arch", "SearchSpace", "SPACES", "get_space", "Supernet", "Subnet", "load_model", "load_oqa_checkpoint",
           "subnet_arch", "arch_metrics"]
__version__ = "0.1.0"

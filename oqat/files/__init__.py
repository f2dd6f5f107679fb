"""File formats: each checkpoint format (`checkpoints`) and each JSON file of a run or an export
(`records`), its writer beside its checked reader; the path of every file (`layout`); reading an
architecture from what a user hands over (`architectures`). The network files' functions are
re-exported here, as users reach them (`oqat.files.load_model(...)`)."""
from .checkpoints import (
    load_model,
    load_oqa_checkpoint,
    load_packed,
    load_subnet,
    load_supernet,
    load_training,
    open_model,
    open_supernet,
    save_packed,
    save_subnet,
    save_supernet,
    save_training,
    subnet_arch,
)

__all__ = ["load_model", "load_oqa_checkpoint", "load_packed", "load_subnet", "load_supernet", "load_training",
           "open_model", "open_supernet", "save_packed", "save_subnet", "save_supernet", "save_training",
           "subnet_arch"]

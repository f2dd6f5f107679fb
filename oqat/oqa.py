"""The authors' released checkpoints (LaVieEnRoseSMZ/OQA, `oqa_mbv3_d234_e346_k357_w1.0_b{4,3,2}`).

Their state dict follows OFA's module tree; `oqa_key` maps each key onto this project's
`Supernet` of the `mbv3` space. Loading is strict: any missing, unexpected or mis-shaped
key is reported, all of them in one message.
"""
import os
import re

import torch

from .checkpoint import CheckpointError
from .space import MBV3
from .supernet import Supernet

_PARTS = [  # (OFA name, ours) inside one block
    (r"inverted_bottleneck\.conv\.conv\.", "expand.conv."),
    (r"inverted_bottleneck\.bn\.bn\.", "expand.bn."),
    (r"depth_conv\.conv\.(\d)to(\d)_matrix$", r"dw.conv.transforms.\1to\2"),
    (r"depth_conv\.conv\.conv\.", "dw.conv."),
    (r"depth_conv\.bn\.bn\.", "dw.bn."),
    (r"depth_conv\.se\.fc\.", "se."),
    (r"point_linear\.conv\.conv\.", "project.conv."),
    (r"point_linear\.bn\.bn\.", "project.bn."),
    (r"depth_conv\.conv\.", "dw.conv."),  # the static first block: one level less
    (r"depth_conv\.bn\.", "dw.bn."),
    (r"point_linear\.conv\.", "project.conv."),
    (r"point_linear\.bn\.", "project.bn."),
]
_TOP = [
    (r"first_conv\.", "stem."),
    (r"final_expand_layer\.", "final_expand."),
    (r"feature_mix_layer\.", "feature_mix."),
    (r"classifier\.linear\.", "classifier."),
]


def oqa_key(key: str) -> str | None:
    """Our state-dict key for one of the authors' keys (None if it has no counterpart)."""
    key = re.sub(r"\.sa$", ".aq.step", re.sub(r"\.sw$", ".wq.step", key))
    m = re.fullmatch(r"blocks\.(\d+)\.mobile_inverted_conv\.(.+)", key)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        for pattern, ours in _PARTS:
            new, n = re.subn("^" + pattern, ours, rest)
            if n:
                return ("first_block." if index == 0 else f"blocks.{index - 1}.") + new
        return None
    for pattern, ours in _TOP:
        new, n = re.subn("^" + pattern, ours, key)
        if n:
            return new
    return None


def load_oqa_checkpoint(path: str, bits: int, num_classes: int = 1000) -> Supernet:
    """An `mbv3` supernet at `bits`, in eval mode, from one of the authors' checkpoints."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"'{path}' could not be read as a safe torch checkpoint: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds no state_dict")
    net = Supernet(MBV3.with_data(3, num_classes), bits)
    ours = net.state_dict()
    mapped, unexpected, wrong = {}, [], []
    for key, value in state.items():
        new = oqa_key(key)
        if new is None or new not in ours:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(ours[new].shape):
            wrong.append(f"{key} {tuple(value.shape)} (expected {tuple(ours[new].shape)})")
        else:
            mapped[new] = value
    missing = [k for k in ours if k not in mapped and not k.endswith("num_batches_tracked")]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:8])}{', ...' if len(unexpected) > 8 else ''})")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong[:8])}{', ...' if len(wrong) > 8 else ''}")
    if problems:
        raise CheckpointError(f"'{path}' is not an OQA mbv3 checkpoint: " + "; ".join(problems))
    net.load_state_dict(mapped, strict=False)
    return net.eval()

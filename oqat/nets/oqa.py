"""The authors' released checkpoints (LaVieEnRoseSMZ/OQA, `oqa_mbv3_d234_e346_k357_w1.0_b{4,3,2}`).

Their state dict follows OFA's module tree; `oqa_key` maps each key onto this project's
`Supernet` of the `mbv3` space. `oqat.files.load_oqa_checkpoint` reads such a file strictly:
any missing, unexpected or mis-shaped key is reported, all of them in one message.
"""
import re

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

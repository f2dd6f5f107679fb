"""The built-in search spaces, by name: adding a space means adding a `SearchSpace` value
here, not code (`mbv3` and `proxyless` are the two published ones; `mini` and
`mini-proxyless` are sized for 28 px images on a CPU).
"""
from .structure import HeadConv, SearchSpace, Stage, mbv3_head


def _grid(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


MBV3 = SearchSpace(
    name="mbv3",
    stem_width=16, stem_stride=2,
    first_block=Stage(16, 1, "relu", False),
    stages=(Stage(24, 2, "relu", False), Stage(40, 2, "relu", True), Stage(80, 2, "h_swish", False),
            Stage(112, 1, "h_swish", True), Stage(160, 2, "h_swish", True)),
    kernel_sizes=(3, 5, 7), expand_ratios=(3, 4, 6), depths=(2, 3, 4),
    resolutions=_grid(128, 224, 4),
    head=mbv3_head(960, 1280),
)


# OFA's OFAProxylessNASNets at width 1.0 (ofa/imagenet_classification/elastic_nn/networks/
# ofa_proxyless.py): relu6 everywhere, no SE, a last stage of one block whose kernel and expand
# ratio are elastic but whose depth is not, and a feature mix with BN before the pooling.
PROXYLESS = SearchSpace(
    name="proxyless",
    stem_width=32, stem_stride=2, stem_act="relu6",
    first_block=Stage(16, 1, "relu6", False),
    stages=(Stage(24, 2, "relu6", False), Stage(40, 2, "relu6", False), Stage(80, 2, "relu6", False),
            Stage(96, 1, "relu6", False), Stage(192, 2, "relu6", False), Stage(320, 1, "relu6", False, fixed_depth=1)),
    kernel_sizes=(3, 5, 7), expand_ratios=(3, 4, 6), depths=(2, 3, 4),
    resolutions=_grid(128, 224, 4),
    head=(HeadConv("feature_mix", 1280, True, "relu6", False),),
    bn_eps=1e-3,
)


# Sized for 20-28 px images on 2 CPU cores: stride-2 stem and two stride-2 stages
# (28 -> 14 -> 7 -> 4), expand ratios 2-4 and depths 1-3; the same block types, SE
# placement and head shape as mbv3. Largest subnet 7.1 M MACs (28 px), smallest 0.7 M (20 px).
MINI = SearchSpace(
    name="mini",
    stem_width=16, stem_stride=2,
    first_block=Stage(16, 1, "relu", False),
    stages=(Stage(24, 2, "relu", False), Stage(32, 1, "relu", True), Stage(48, 2, "h_swish", False),
            Stage(64, 1, "h_swish", True)),
    kernel_sizes=(3, 5, 7), expand_ratios=(2, 3, 4), depths=(1, 2, 3),
    # Native 28 px at most: upsampling to 32 cost 2.7 points (4-bit largest, 1 epoch) and 30% more MACs.
    resolutions=(20, 24, 28),
    head=mbv3_head(256, 512),
    in_channels=1, num_classes=10,
    signed_inputs=True,  # +1.9 points (4-bit largest, 1 epoch) over the authors' unsigned rule
)


# proxyless sized like mini: the same widths ratio, relu6, the one-block last stage and the
# pre-pooling feature mix, for 28-32 px single-channel images.
MINI_PROXYLESS = SearchSpace(
    name="mini-proxyless",
    stem_width=16, stem_stride=2, stem_act="relu6",
    first_block=Stage(8, 1, "relu6", False),
    stages=(Stage(16, 2, "relu6", False), Stage(24, 2, "relu6", False), Stage(32, 1, "relu6", False),
            Stage(64, 1, "relu6", False, fixed_depth=1)),
    kernel_sizes=(3, 5, 7), expand_ratios=(2, 3, 4), depths=(1, 2, 3),
    resolutions=(24, 28, 32),
    head=(HeadConv("feature_mix", 256, True, "relu6", False),),
    in_channels=1, num_classes=10, bn_eps=1e-3, signed_inputs=True,
)


# The built-in spaces, by name. Spaces read from files are never added here: whoever reads
# one passes it on.
SPACES: dict[str, SearchSpace] = {s.name: s for s in (MBV3, PROXYLESS, MINI, MINI_PROXYLESS)}


def get_space(space: "str | SearchSpace") -> SearchSpace:
    """A space, given as itself or by name."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, str):
        raise TypeError(f"a search space is a SearchSpace or its name ({', '.join(SPACES)}), "
                        f"got {type(space).__name__}")
    if space not in SPACES:
        raise ValueError(f"unknown search space '{space}' (known: {', '.join(SPACES)})")
    return SPACES[space]

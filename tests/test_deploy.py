"""The deployed graphs compute the network's own codes: the integer ONNX graph in onnxruntime
and the QONNX graph in the qonnx package's executor, activation by activation."""
import numpy as np
import onnx
import pytest
import torch
from test_exact import recorded
from test_export import ARCH, make_subnet

from oqat.deploy import export, runners
from oqat.nets import packed

pytestmark = pytest.mark.usefixtures("one_thread")


def torch_codes(net, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each quantized conv's input codes (by module name) as PyTorch's evaluation computes them."""
    _, codes = recorded(net.eval(), x)
    return {name: q.numpy() for name, q in zip(packed.quantized_convs(net), codes)}


def assert_same_codes(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Equal codes, but for a few that lie within float rounding of a boundary: those differ
    by one code. A wrong scale, clip or rounding mode would move a large share of them."""
    assert set(got) == set(want)
    moved = total = 0
    for name in want:
        diff = np.abs(np.rint(got[name].astype(np.float64)) - want[name])
        assert diff.max() <= 1, name
        moved, total = moved + int((diff > 0).sum()), total + diff.size
    assert moved <= 1e-4 * total, f"{moved} of {total} codes differ"


@pytest.mark.parametrize("bits", [4, 2])
def test_onnxruntime_computes_the_network_codes(bits):
    """Every QuantizeLinear output of the integer graph, read as a graph output."""
    net = make_subnet(bits)
    x = torch.randn(64, 1, ARCH.r, ARCH.r, generator=torch.Generator().manual_seed(2))
    model = export.build_onnx(net)
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    runner = runners.Runner(model, "onnxruntime")
    outputs = runner._session.run(names, {"input": x.numpy()})
    want = torch_codes(net, x)
    for n, o in zip(names, outputs):  # the same rule: every code equal
        assert np.array_equal(o.astype(np.float32), want[n.removesuffix(".a_q")]), n


@pytest.mark.parametrize("bits", [4, 2])
def test_the_qonnx_executor_computes_the_network_codes(bits):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes
    net = make_subnet(bits)
    x = torch.randn(16, 1, ARCH.r, ARCH.r, generator=torch.Generator().manual_seed(3))
    model = export.build_qonnx(net)
    quants = {n.output[0]: n for n in model.graph.node if n.op_type == "Quant"}
    bitwidths = {round(float(onnx.numpy_helper.to_array(i).item())) for i in model.graph.initializer
                 if i.name.endswith(".bitwidth")}
    assert bitwidths == {bits}  # the real bit-width, not 8
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = len(x)
    context = execute_onnx(ModelWrapper(model).transform(InferShapes()), {"input": x.numpy()},
                           return_full_exec_context=True)
    steps = {name: conv.aq.step.detach().abs().item() for name, conv in packed.quantized_convs(net).items()}
    got = {name: context[f"{name}.a_quant"] / steps[name] for name in steps}  # code * step / step
    assert len(quants) == 2 * len(steps)
    assert_same_codes(torch_codes(net, x), got)
    with torch.no_grad():
        ref = net(x).numpy()
    assert (context["logits"].argmax(1) == ref.argmax(1)).all()

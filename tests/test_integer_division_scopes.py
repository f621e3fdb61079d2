"""The integer-division guard resolves names per graph and reads sparse constants.

An If or Loop body may define a tensor under a name the main graph also uses; ONNX Runtime then reads, in each graph,
the tensor that graph defines. The guard read one flat table for all graphs, so a branch's float "x" passed an int64
x / y, and a branch's d = 2 passed a main-graph d = -1; sparse constants it did not read at all. Each of these let
INT64_MIN / -1 reach ONNX Runtime, whose SIGFPE ended the server process (found by review).
"""

from __future__ import annotations

import grpc
import numpy as np
import onnx
import pytest
from _server_support import IR_VERSION, serving, sha256
from onnx import TensorProto, helper

from rr_proto import codec
from rr_server.errors import InvalidArgument
from rr_server.integer_division import check_integer_division

INT64 = TensorProto.INT64


def info(name: str, elem: int = INT64) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [1])


def model(
    nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[tuple[str, int]], **graph_fields
) -> onnx.ModelProto:
    """A model of int64 inputs `inputs` and typed `outputs`; `graph_fields`: initializer, sparse_initializer."""
    graph = helper.make_graph(nodes, "g", [info(n) for n in inputs], [info(n, t) for n, t in outputs], **graph_fields)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def with_branches(body: list[onnx.NodeProto], out: str, elem: int, initializer: onnx.TensorProto) -> list:
    """A Constant condition and an If whose two branches run `body` with `initializer` and give `out` as "z"."""
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True]))
    branches = {
        key: helper.make_graph(body, key, [], [info(out, elem)], initializer=[initializer])
        for key in ("then_branch", "else_branch")
    }
    return [cond, helper.make_node("If", ["c"], ["z"], **branches)]


def sparse(name: str, value: int) -> onnx.SparseTensorProto:
    values = helper.make_tensor(name, INT64, [1], [value])
    return helper.make_sparse_tensor(values, helper.make_tensor(f"{name}_idx", INT64, [1], [0]), [1])


def inputs_divided_under_a_float_shadow() -> onnx.ModelProto:
    """x / y of two int64 inputs, and branches holding a float initializer also named "x"."""
    branch = with_branches(
        [helper.make_node("Identity", ["x"], ["b"])],
        "b",
        TensorProto.FLOAT,
        helper.make_tensor("x", TensorProto.FLOAT, [1], [2.0]),
    )
    div = helper.make_node("Div", ["x", "y"], ["q"])
    return model([div, *branch], ["x", "y"], [("q", INT64), ("z", TensorProto.FLOAT)])


def minus_one_under_a_shadow() -> onnx.ModelProto:
    """x / d, d a main-graph initializer holding -1, and branches holding an initializer d = 2."""
    branch = with_branches(
        [helper.make_node("Identity", ["d"], ["b"])], "b", INT64, helper.make_tensor("d", INT64, [1], [2])
    )
    div = helper.make_node("Div", ["x", "d"], ["y"])
    return model(
        [div, *branch], ["x"], [("y", INT64), ("z", INT64)], initializer=[helper.make_tensor("d", INT64, [1], [-1])]
    )


def sparse_constant_minus_one() -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["d"], sparse_value=sparse("v", -1))
    return model([const, helper.make_node("Div", ["x", "d"], ["y"])], ["x"], [("y", INT64)])


def sparse_initializer_minus_one() -> onnx.ModelProto:
    div = helper.make_node("Div", ["x", "d"], ["y"])
    return model([div], ["x"], [("y", INT64)], sparse_initializer=[sparse("d", -1)])


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (inputs_divided_under_a_float_shadow, "divides int64 by 'y', a value computed from the inputs"),
        (minus_one_under_a_shadow, "divides int64 by a constant holding -1"),
        (sparse_constant_minus_one, "divides int64 by a constant holding -1"),
        (sparse_initializer_minus_one, "divides int64 by a constant holding -1"),
    ],
)
def test_a_division_that_can_trap_is_refused(build, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        check_integer_division(build())


def test_a_branch_reads_its_own_divisor_not_the_main_graphs():
    """Inside a branch its own d hides the main graph's: d = -1 there is refused, d = 2 there taken."""
    div = helper.make_node("Div", ["x", "d"], ["b"])
    for inner, outer, refused in ((-1, 2, True), (2, -1, False)):
        branch = with_branches([div], "b", INT64, helper.make_tensor("d", INT64, [1], [inner]))
        main_d = helper.make_node("Constant", [], ["d"], value=helper.make_tensor("v", INT64, [1], [outer]))
        slice_ = model([main_d, *branch], ["x"], [("z", INT64), ("d", INT64)])
        if refused:
            with pytest.raises(InvalidArgument, match="Div 'b' divides int64 by a constant holding -1"):
                check_integer_division(slice_)
        else:
            check_integer_division(slice_)


def test_a_branch_declaration_does_not_retype_the_main_graphs_tensor():
    """A branch's value_info calling the main graph's int64 x float does not let x / y through in the branch."""
    branch = with_branches(
        [helper.make_node("Div", ["x", "y"], ["b"])], "b", INT64, helper.make_tensor("unused", INT64, [1], [1])
    )
    branch[1].attribute[0].g.value_info.append(info("x", TensorProto.FLOAT))
    with pytest.raises(InvalidArgument, match="Div 'b' divides int64 by 'y'"):
        check_integer_division(model(branch, ["x", "y"], [("z", INT64)]))


def loop_of_float_division() -> onnx.ModelProto:
    """z = x / 2.0 on the float input x, three times, in a Loop body that holds its own initializer "two"."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Div", ["acc", "two"], ["acc_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            info("acc", TensorProto.FLOAT),
        ],  # fmt: skip
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), info("acc_out", TensorProto.FLOAT)],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
    )
    trips = helper.make_node("Constant", [], ["n"], value=helper.make_tensor("t", INT64, [], [3]))
    loop = helper.make_node("Loop", ["n", "", "x"], ["z"], body=body)
    graph = helper.make_graph([trips, loop], "g", [info("x", TensorProto.FLOAT)], [info("z", TensorProto.FLOAT)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def positive_divisors() -> onnx.ModelProto:
    """y = x / d (d = 2, sparse) and, in branches holding their own d = 3, z = x / d."""
    branch = with_branches(
        [helper.make_node("Div", ["x", "d"], ["b"])], "b", INT64, helper.make_tensor("d", INT64, [1], [3])
    )
    div = helper.make_node("Div", ["x", "d"], ["y"])
    return model([div, *branch], ["x"], [("y", INT64), ("z", INT64)], sparse_initializer=[sparse("d", 2)])


def test_divisions_that_cannot_trap_are_taken():
    check_integer_division(loop_of_float_division())
    check_integer_division(positive_divisors())


@pytest.fixture
def stubs(tmp_path):
    with serving(tmp_path) as (_, stubs):
        yield stubs


def test_the_server_refuses_the_shadowed_division_and_runs_legitimate_branches(stubs):
    """Uploaded, the float-shadowed x / y was accepted and INT64_MIN / -1 then ended the server process."""
    with pytest.raises(grpc.RpcError) as err:
        stubs.upload(inputs_divided_under_a_float_shadow().SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "divides int64 by 'y', a value computed from the inputs" in err.value.details()
    for built, feeds, want in (
        (loop_of_float_division(), {"x": np.array([8.0], np.float32)}, {"z": [1.0]}),
        (positive_divisors(), {"x": np.array([-7], np.int64)}, {"y": [-3], "z": [-2]}),
    ):
        data = built.SerializeToString()
        stubs.upload(data)
        reply = stubs.kserve.ModelInfer(codec.encode_infer_request(sha256(data), feeds), timeout=10)
        outputs = codec.decode_infer_response(reply)
        for name, value in want.items():
            np.testing.assert_array_equal(outputs[name], value)

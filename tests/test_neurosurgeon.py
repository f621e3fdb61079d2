"""Neurosurgeon's regression predictor: layer types, recovery of known per-type laws, fallback, validation."""

from __future__ import annotations

import numpy as np
import pytest

from rr_edge.neurosurgeon import fit, layer_type, predict


def block(ops, flops, inp, out, params):
    return {"ops": ops, "flops": flops, "input_bytes": inp, "output_bytes": out, "param_bytes": params}


def synthetic(rng: np.random.Generator, n: int):
    """Conv blocks: latency linear in flops; pooling blocks: logarithmic in input bytes."""
    blocks, lat, en = [], [], []
    for _ in range(n):
        flops = float(rng.uniform(1e6, 1e9))
        blocks.append(block(["Conv", "BatchNormalization", "Relu"], flops, 1e5, 1e5, 1e4))
        lat.append(0.2 + 2e-8 * flops)
        en.append(1.0 + 1e-7 * flops)
        inp = float(rng.uniform(1e3, 1e7))
        blocks.append(block(["MaxPool"], inp / 4, inp, inp / 4, 0))
        lat.append(0.05 + 0.1 * np.log1p(inp))
        en.append(0.1 + 0.3 * np.log1p(inp))
    return blocks, np.array(lat), np.array(en)


def test_layer_type_is_the_dominant_op_category():
    assert layer_type(["Conv", "Relu", "Add"]) == "conv"
    assert layer_type(["Flatten", "Gemm"]) == "fc"
    assert layer_type(["GlobalAveragePool", "Relu"]) == "pool"
    assert layer_type(["Relu"]) == "act"
    assert layer_type(["Reshape"]) == "other"


def test_recovers_linear_and_logarithmic_laws():
    rng = np.random.default_rng(0)
    blocks, lat, en = synthetic(rng, 20)
    model = fit(blocks, lat, en)
    assert model.latency.per_type["conv"].kind in ("linear", "multi")
    assert model.latency.per_type["pool"].kind == "log"
    test_blocks, test_lat, test_en = synthetic(np.random.default_rng(1), 10)
    p_lat, p_en = predict(model, test_blocks)
    assert p_en is not None
    np.testing.assert_allclose(p_lat, test_lat, rtol=1e-3)
    np.testing.assert_allclose(p_en, test_en, rtol=1e-3)


def test_rare_types_use_the_global_model_and_predictions_are_non_negative():
    rng = np.random.default_rng(2)
    blocks, lat, _ = synthetic(rng, 5)
    blocks.append(block(["Gemm"], 1e6, 4e3, 4e3, 4e6))
    lat = np.append(lat, 0.3)
    model = fit(blocks, lat)
    assert "fc" not in model.latency.per_type
    p_lat, p_en = model.predict([block(["Gemm"], 0, 0, 0, 0), block(["Softmax"], 1e3, 1e3, 1e3, 0)])
    assert p_en is None and p_lat.shape == (2,) and np.all(p_lat >= 0)


def test_bad_input_rejected():
    b = [block(["Conv"], 1, 1, 1, 1), block(["Conv"], 2, 2, 2, 2)]
    with pytest.raises(ValueError):
        fit(b[:1], [1.0])
    with pytest.raises(ValueError):
        fit(b, [1.0])
    with pytest.raises(ValueError):
        fit(b, [1.0, float("nan")])
    with pytest.raises(ValueError, match="flops"):
        fit([{"ops": ["Conv"]}, {"ops": ["Conv"]}], [1.0, 2.0])


def test_plan_inputs_keep_each_nodes_whole_model_latency():
    """The Neurosurgeon baseline's per-block figures are rescaled on the edge and on the cloud alike, so each node's
    whole model costs what the CF figures (calibrated to the measured whole model) say."""
    from rr_edge.blocks import Block, BlockGraph
    from rr_edge.client import Prediction
    from rr_edge.meters.model import PowerSpec
    from rr_edge.netmodel import NetworkModel
    from rr_edge.offload import Costs, neurosurgeon_inputs
    from rr_edge.planner import PlanInputs

    flops = [1e8, 4e8, 2e8, 8e8, 3e8, 6e8]
    blocks = tuple(
        Block(k, ("Conv", "Relu"), f"sig{k}", (f"t{k}",), (f"t{k + 1}",), int(f), 4096, 1 << 16, 1 << 16, (k,))
        for k, f in enumerate(flops)
    )
    graph = BlockGraph("m", (), (), blocks, {})

    def preds(ms_per_gflop: float) -> tuple[Prediction, ...]:
        # Measured blocks follow a linear law; the others carry a CF figure far off it.
        return tuple(
            Prediction(f"sig{k}", ms_per_gflop * f / 1e9 if k % 2 == 0 else 50.0, 1.0,
                       "measured" if k % 2 == 0 else "predicted", "measured", "model")
            for k, f in enumerate(flops)
        )  # fmt: skip

    link = NetworkModel.affine(1.0, 1000.0)
    costs = Costs(preds(10.0), preds(1.0), 1.3, link, link, PowerSpec(5.0, 1.0))
    inputs = PlanInputs(
        edge_ms=[p.latency_ms for p in costs.edge], edge_mJ=np.ones(6), cloud_ms=[p.latency_ms for p in costs.cloud],
        upload_bytes=np.full(6, 4096), boundary_bytes=np.full(7, 1 << 16), uplink=link, downlink=link,
        e2e_correction=1.3, cloud_correction=0.6,
    )  # fmt: skip
    ns = neurosurgeon_inputs(graph, costs, inputs)
    assert ns is not None
    np.testing.assert_allclose(ns.cloud_ms, np.array(flops) / 1e9, rtol=1e-6)  # the regression's own shares
    assert ns.e2e_correction * ns.edge_ms.sum() == pytest.approx(1.3 * inputs.edge_ms.sum())
    assert ns.cloud_correction * ns.cloud_ms.sum() == pytest.approx(0.6 * inputs.cloud_ms.sum())


def test_plan_energy_names_the_power_model_beside_a_meter() -> None:
    """Metered block energies (rapl) still go with modelled waiting and transfers: the plan says both."""
    from rr_edge.client import Prediction
    from rr_edge.meters.model import PowerSpec
    from rr_edge.netmodel import NetworkModel
    from rr_edge.offload import Costs

    link = NetworkModel.affine(1.0, 1000.0)

    def costs(source: str) -> Costs:
        edge = (Prediction("s", 1.0, 1.0, "measured", "measured", source),)
        return Costs(edge, edge, 1.0, link, link, PowerSpec(5.0, 1.0))

    assert costs("rapl").energy_source == "model,rapl"
    assert costs("model").energy_source == "model"

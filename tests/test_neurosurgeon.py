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

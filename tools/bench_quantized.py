"""Benchmark: the blocks of a QDQ-quantized model against the float model's (docs/performance.md#quantized-models).

    PYTHONPATH=. .venv/bin/python -m tools.bench_quantized [--model resnet18] [--size 96] [--repeat 50]

Quantizes the exported zoo model with ONNX Runtime's static quantizer (QDQ format, uint8 activations, int8
weights, calibrated on four random inputs: random weights, so the accuracy means nothing, the speed does), cuts
both models into blocks, and times in ONNX Runtime (one thread) the whole model and every block as a standalone
slice. A block cut inside a DequantizeLinear -> op -> QuantizeLinear unit runs the op in float, so the sum of the
quantized model's blocks drifts far above its whole-model time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from rr_edge.blocks import analyze
from rr_edge.onnx_io import load_model
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer, whole_model_bytes
from tools._models import cached_export
from tools._timing import session_median_ms


def quantize(src: Path, dst: Path, size: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RandomInputs(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            name = load_model(src).graph.input[0].name
            self.feeds = iter([{name: rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(src, dst, RandomInputs(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)  # fmt: skip


def time_ms(model: bytes, repeat: int) -> float:
    return session_median_ms(model, OrtSettings(intra_op_threads=1), repeat, warmup=3)


def blocks_report(path: Path, repeat: int) -> dict[str, object]:
    model = load_model(path)
    graph = analyze(model)
    slicer = Slicer(model, graph)
    whole = time_ms(whole_model_bytes(model), repeat)
    blocks = [time_ms(slicer.slice(k, k).SerializeToString(), repeat) for k in range(len(graph))]
    return {
        "blocks": len(graph),
        "whole_ms": round(whole, 3),
        "sum_of_blocks_ms": round(sum(blocks), 3),
        "sum_over_whole": round(sum(blocks) / whole, 2),
        "largest_boundary_bytes": max((b.output_bytes for b in graph.blocks[:-1]), default=0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args(argv)
    src = cached_export(args.model, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "qdq.onnx"
        quantize(src, quantized, args.size)
        out = {
            "model": f"{args.model}@{args.size}",
            "float": blocks_report(src, args.repeat),
            "qdq": blocks_report(quantized, args.repeat),
        }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Blocks of TorchScript exports with a dynamic batch against the same models exported at batch 1 (docs/usage.md).

    python -m tools.bench_dynamic_batch [--models shufflenet_v2_x0_5,vit_b_16,...] [--size 224] [--json FILE]

The TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) writes a dynamic batch's shapes as Shape -> Gather
-> Div chains that ONNX shape inference cannot follow; `rr_edge.shapes` evaluates that shape arithmetic once the
batch is fixed. Per model and export: the number of blocks, the largest block's node count, how many shapes had to be
read from a run of the model (`sample_shapes`), the analysis seconds, and the largest difference between the
model's output and that of all its single-block slices run one after the other (random weights and input).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MODELS = ("shufflenet_v2_x0_5", "mobilenet_v3_small", "resnet18", "efficientnet_b0", "vit_b_16", "swin_t")


def _run(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def measure(path: Path, x: np.ndarray) -> dict[str, float | int]:
    from rr_edge.blocks import analyze
    from rr_edge.onnx_io import load_model
    from rr_edge.slicing import Slicer

    model = load_model(path)
    t0 = time.perf_counter()
    graph = analyze(model, path.stem)
    analyze_s = time.perf_counter() - t0
    slicer = Slicer(model, graph)
    values = {"input": x}
    for k, block in enumerate(graph.blocks):
        values.update(_run(slicer.slice(k, k), {n: values[n] for n in block.inputs}))
    want = _run(model, {"input": x})["output"]
    return {
        "blocks": len(graph.blocks),
        "largest_block_nodes": max(len(b.nodes) for b in graph.blocks),
        "shapes_from_a_run": len(graph.sample_shapes),
        "analyze_s": round(analyze_s, 3),
        "chained_slices_max_abs_diff": float(np.abs(values["output"] - want).max()),
    }


def bench(name: str, size: int, folder: Path) -> dict[str, dict[str, float | int]]:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    out = {}
    for label, axes in (("batch_1", None), ("dynamic_batch", {"input": {0: "N"}, "output": {0: "N"}})):
        path = folder / f"{name}_{label}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, x, str(path), input_names=["input"], output_names=["output"], dynamo=False,
                              opset_version=18, dynamic_axes=axes)  # fmt: skip
        out[label] = measure(path, x.numpy())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_dynamic_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision classifiers")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report: dict = {"size": args.size, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    with tempfile.TemporaryDirectory() as tmp:
        report["models"] = {name: bench(name, args.size, Path(tmp)) for name in args.models.split(",") if name}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

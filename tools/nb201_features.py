"""Column features of a NAS-Bench-201 cell computed from its architecture string only.

* ``enc``  the 30-dim op one-hot of the 6 edges (the data set's architecture encoding, without its constant bias).
* ``live`` the same one-hot restricted to edges on a path from the cell input to its output through non-``none``
  edges (ops off such paths are dead code that some runtimes prune).
* ``cost`` analytic counts of the live ops in the CIFAR NB201 network (3 stages of 5 cells with 16/32/64 channels at
  32/16/8 px): log multiply-adds x2, log conv weights, log activation traffic, log number of live ops.

Additive features (``op_counts``): how many of the cell's 6 edges carry each op, live or not; a device whose latency
is a sum of per-op costs (Eyeriss and FPGA estimators, simple CPUs) is a linear function of them.
"""

from __future__ import annotations

import math

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))  # (from node, to node), order of the arch string
STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, resolution)
CELLS_PER_STAGE = 5


def edge_ops(arch: str) -> list[str]:
    ops = [tok.split("~")[0] for tok in arch.replace("+", "").split("|") if tok]
    if len(ops) != len(EDGES) or any(o not in OPS for o in ops):
        raise ValueError(f"not a NAS-Bench-201 cell string: {arch!r}")
    return ops


def _live_edges(ops: list[str]) -> list[bool]:
    forward, backward = {0}, {3}
    for (src, dst), op in sorted(zip(EDGES, ops, strict=True), key=lambda e: e[0][1]):
        if op != "none" and src in forward:
            forward.add(dst)
    for (src, dst), op in sorted(zip(EDGES, ops, strict=True), key=lambda e: -e[0][1]):
        if op != "none" and dst in backward:
            backward.add(src)
    return [op != "none" and s in forward and d in backward for (s, d), op in zip(EDGES, ops, strict=True)]


def names() -> list[str]:
    enc = [f"enc_e{e}_{op}" for e in range(len(EDGES)) for op in OPS]
    live = [f"live_e{e}_{op}" for e in range(len(EDGES)) for op in OPS]
    return enc + live + ["log_flops", "log_conv_params", "log_activations", "log_live_ops"]


def additive_names() -> list[str]:
    return [f"count_{op}" for op in OPS]


def op_counts(arch: str) -> list[float]:
    ops = edge_ops(arch)
    return [float(ops.count(op)) for op in OPS]


def features(arch: str, encoding_only: bool = False) -> list[float]:
    ops = edge_ops(arch)
    enc = [1.0 if o == op else 0.0 for o in ops for op in OPS]
    if encoding_only:
        return enc
    live_mask = _live_edges(ops)
    live = [1.0 if (lv and o == op) else 0.0 for o, lv in zip(ops, live_mask, strict=True) for op in OPS]
    n = {op: sum(1 for o, lv in zip(ops, live_mask, strict=True) if lv and o == op) for op in OPS}
    flops = params = acts = 0.0
    for ch, px in STAGES:
        hw = px * px
        flops += CELLS_PER_STAGE * (
            n["nor_conv_1x1"] * 2 * hw * ch * ch
            + n["nor_conv_3x3"] * 18 * hw * ch * ch
            + n["avg_pool_3x3"] * 9 * hw * ch
        )
        params += CELLS_PER_STAGE * (n["nor_conv_1x1"] * ch * ch + n["nor_conv_3x3"] * 9 * ch * ch)
        acts += CELLS_PER_STAGE * (len(EDGES) - n["none"]) * hw * ch
    fixed_flops = 2 * 32 * 32 * 3 * 16 * 9 + 2 * 2 * (16 * 16 * 16 * 32 * 9 + 8 * 8 * 32 * 64 * 9)  # stem, reductions
    cost = [math.log(flops + fixed_flops), math.log(params + 1000), math.log(acts + 1000), math.log1p(sum(live))]
    return enc + live + cost

"""Benchmark: where a slice upload's time goes (docs/performance.md, "Slice upload").

    PYTHONPATH=. .venv/bin/python -m tools.bench_upload [--model resnet18 | --onnx FILE] [--blocks A:B] [--repeat 7]

The slice: a whole torchvision model at 224 x 224 (resnet18: 45 MiB, ~10 s; exported once into `.cache/models`), or
with `--blocks A:B` its atomic blocks A..B (as a runner uploads its middle slice).
* `end_to_end_ms`: `Client.upload_slice(probe=True)` against rr-server in a subprocess over loopback: the edge's
  hashing, its status query, the transfer in 1 MiB chunks and all of the server's work (the probe does everything a
  commit does except the final rename, then opens the slice in ONNX Runtime as an upload with `load` does, so it can
  be repeated).
* `edge_sha256_ms`: the edge's SHA-256 of the slice (its id, sent in the header before any byte).
* `server_stages_ms`: the server's steps one at a time, in this process, on the same bytes: SHA-256 and writing the
  chunks to a temporary file, fsync, reading it back, parsing it (`onnx.load_from_string`, for the checks on
  external data and custom domains), `onnx.checker.check_model` given the received bytes (what rr-server does)
  or the parsed ModelProto (which serializes it again first: what it did before), and opening the file in ONNX
  Runtime (CPU provider, rr-server's session options); `open_probe_session`: opening what an upload probe of the
  same size carries (`rr_edge.netprofile.probe_slice`, one MatMul) instead, the part of the opening the probes see.
Medians over `--repeat` runs; the file system is the one holding `--store` (default: a temporary directory under
`.cache`). This process tunes glibc's allocator as rr-server does (`rr_proto.allocator.tune_allocator`; without it
every 45 MiB buffer is freshly mapped and page-faulted; `RR_MALLOC_TUNING=0` measures that way). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort

from rr_edge.blocks import analyze
from rr_edge.client import Client
from rr_edge.netprofile import probe_slice
from rr_edge.slicing import slice_model
from rr_proto import allocator
from rr_server.sessions import session_options
from tools._models import REPO, cached_export
from tools._server import rr_server
from tools._timing import median_ms

CHUNK = 1 << 20
CPU = ["CPUExecutionProvider"]


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    return round(median_ms(fn, repeat), 1)


def server_stages(data: bytes, store: Path, repeat: int) -> dict[str, float]:
    path = store / "stage.part"
    chunks = [data[offset : offset + CHUNK] for offset in range(0, len(data), CHUNK)]  # as the server receives them

    def hash_and_write() -> None:
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)

    def fsync() -> None:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())

    stages = {"hash_and_write": _median_ms(hash_and_write, repeat)}
    fsyncs = []
    for _ in range(repeat):  # each fsync after a fresh write, as in an upload
        hash_and_write()
        fsyncs.append(_median_ms(fsync, 1))
    stages["fsync"] = statistics.median(fsyncs)
    stages["read_back"] = _median_ms(path.read_bytes, repeat)
    stages["parse"] = _median_ms(lambda: onnx.load_from_string(data), repeat)
    model = onnx.load_from_string(data)
    stages["checker_on_bytes"] = _median_ms(lambda: onnx.checker.check_model(data), repeat)
    stages["checker_on_model_proto"] = _median_ms(lambda: onnx.checker.check_model(model), repeat)
    options = session_options()
    stages["open_session"] = _median_ms(lambda: ort.InferenceSession(str(path), options, providers=CPU), repeat)
    path.write_bytes(probe_slice(len(data)))  # what an upload probe of the same size opens: one MatMul
    stages["open_probe_session"] = _median_ms(lambda: ort.InferenceSession(str(path), options, providers=CPU), repeat)
    path.unlink()
    return stages


def end_to_end(data: bytes, store: Path, repeat: int) -> float:
    with rr_server(store) as address, Client(address) as client:
        client.upload_slice(data, probe=True)  # warm-up: the channel, the server's first allocations
        return _median_ms(lambda: client.upload_slice(data, probe=True), repeat)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="torchvision model uploaded whole, at 224 (default resnet18)")
    p.add_argument("--onnx", type=Path, help="upload this ONNX file instead")
    p.add_argument("--blocks", help="A:B: upload only these atomic blocks of the model, as a runner's middle slice")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--store", type=Path, default=REPO / ".cache", help="where temporary files go (its file system)")
    args = p.parse_args()
    tuned = allocator.tune_allocator()
    name = str(args.onnx) if args.onnx else f"{args.model}_224"
    data = (args.onnx or cached_export(args.model, 224)).read_bytes()
    if args.blocks:
        model = onnx.load_from_string(data)
        a, b = (int(v) for v in args.blocks.split(":"))
        data = slice_model(model, analyze(model, name), a, b).SerializeToString()
        name += f"[{a}:{b}]"
    args.store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.store, prefix="rr-bench-upload-") as tmp:
        e2e = end_to_end(data, Path(tmp), args.repeat)
        stages = server_stages(data, Path(tmp), args.repeat)
    result = {
        "slice": name,
        "slice_mib": round(len(data) / CHUNK, 1),
        "repeat": args.repeat,
        "end_to_end_ms": e2e,
        "end_to_end_mb_per_s": round(len(data) / 1e3 / e2e, 1),
        "edge_sha256_ms": _median_ms(lambda: hashlib.sha256(data).digest(), args.repeat),
        "server_stages_ms": stages,
        "allocator_tuned": tuned,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

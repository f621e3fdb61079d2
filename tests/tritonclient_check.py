"""Drive rr-server with the unmodified tritonclient gRPC client; run as a separate process.

tritonclient registers its own `inference` protobuf package in the default descriptor pool, which clashes with
rr_proto.inference in one process, so tests run this script with the venv's python instead of importing it.

    python tests/tritonclient_check.py --url HOST:PORT --model SLICE_ID --input x.npy --out-dir DIR [--stream-copies 3]

Writes DIR/infer.npy (ModelInfer), DIR/stream_<k>.npy (ModelStreamInfer) and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import queue
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--stream-copies", type=int, default=3)
    p.add_argument("--token", default="")
    args = p.parse_args()
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    x = np.load(args.input)
    client = grpcclient.InferenceServerClient(url=args.url)
    summary: dict = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "server": client.get_server_metadata(headers=headers, as_json=True),
    }
    client.load_model(args.model, headers=headers)
    summary["model_ready"] = client.is_model_ready(args.model, headers=headers)
    meta = client.get_model_metadata(args.model, headers=headers, as_json=True)
    summary["metadata"] = meta
    (inp_meta,) = meta["inputs"]
    outputs = [o["name"] for o in meta["outputs"]]

    tensor = grpcclient.InferInput(inp_meta["name"], list(x.shape), inp_meta["datatype"])
    tensor.set_data_from_numpy(x)
    result = client.infer(
        args.model, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs], headers=headers
    )
    np.save(args.out_dir / "infer.npy", result.as_numpy(outputs[0]))

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    for k in range(args.stream_copies):
        client.async_stream_infer(args.model, [tensor], request_id=f"s{k}")
    bad = grpcclient.InferInput(inp_meta["name"], [1, 1], inp_meta["datatype"])
    bad.set_data_from_numpy(np.zeros((1, 1), dtype=x.dtype))
    client.async_stream_infer(args.model, [bad], request_id="bad")  # error inside the stream, stream survives
    client.async_stream_infer(args.model, [tensor], request_id=f"s{args.stream_copies}")
    errors = []
    for _ in range(args.stream_copies + 2):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
        else:
            rid = result.get_response().id
            np.save(args.out_dir / f"stream_{rid}.npy", result.as_numpy(outputs[0]))
    client.stop_stream()
    summary["stream_errors"] = errors
    summary["index"] = client.get_model_repository_index(headers=headers, as_json=True)
    client.unload_model(args.model, headers=headers)
    summary["index_after_unload"] = client.get_model_repository_index(headers=headers, as_json=True)
    client.close()
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

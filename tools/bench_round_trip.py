"""Benchmark: a request's network time on a link with a round trip, against what the plan charges for it
(docs/performance.md "A request's round trip").

    PYTHONPATH=. .venv/bin/python -m tools.bench_round_trip [--delays-ms direct,0,5,20] [--rate-mbps 160]

The testbed's veth links have almost no round trip (tc netem, which adds delay, is absent here), so this tool puts
a TCP relay (`DelayRelay`) between the edge and an in-process rr-server. The relay delivers every chunk `delay` ms
after it arrived, in each direction, paced at `--rate-mbps`: a link whose round trip is twice the delay (`direct`:
no relay, the server on loopback, where a call's start-up weighs most). Per delay:
two network profiles through the relay (echo sizes to 2 MiB, no upload probes), one timed on an open echo stream
(`streamed`, what netprofile does) and one with an echo call per transfer (`per_call`, what it did before
EchoService.Exchange), then `--requests` requests of two plans that offload a whole conv chain (8 KiB and 1 MiB
tensors). For each, the median network time of a round trip (its time less the server's reported run) beside what
each profile charges for it (`rr_edge.netmodel.round_trip_ms`). Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rr_edge.client import Client
from rr_edge.netmodel import NetworkModel, round_trip_ms
from rr_edge.netprofile import NetProfileConfig, profile_network
from rr_edge.runner import PlanSlices, Runner
from rr_server import Server, ServerConfig
from tools.bench_runner import conv_chain

WARMUP = 3
Link = tuple[NetworkModel, NetworkModel]  # uplink, downlink


class DelayRelay:
    """A TCP relay from 127.0.0.1 to `target` that delivers each chunk `delay_s` after it arrived, paced at
    `rate_Bps` bytes/s, in both directions (its own event loop in a thread; a context manager)."""

    def __init__(self, target: str, delay_s: float, rate_Bps: float) -> None:
        host, _, port = target.rpartition(":")
        self._target, self._delay, self._rate = (host, int(port)), delay_s, rate_Bps
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        started.set()
        self._loop.run_forever()

    async def _connect(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(*self._target)
        with contextlib.suppress(asyncio.CancelledError):  # the relay closes (`_close`)
            await asyncio.gather(self._pipe(client_in, server_out), self._pipe(server_in, client_out))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def receive() -> None:
            leaves = 0.0  # when the previous chunk leaves: a chunk waits for the one before it (the rate)
            try:
                while data := await source.read(1 << 16):
                    leaves = max(loop.time() + self._delay, leaves + len(data) / self._rate)
                    queue.put_nowait((leaves, data))
            finally:
                queue.put_nowait((loop.time() + self._delay, b""))  # the end travels as late as the data

        async def deliver() -> None:
            try:
                while True:
                    at, data = await queue.get()
                    await asyncio.sleep(max(at - loop.time(), 0.0))
                    if not data:
                        return
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(receive(), deliver(), return_exceptions=True)  # a reset ends the pair, nothing more

    def __enter__(self) -> DelayRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _close(self) -> None:
        """Stop listening and end the relayed connections (a channel closed by its client may leave them open)."""
        self._server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def requests(client: Client, curves: dict[str, Link], size: int, n: int) -> dict[str, Any]:
    """`n` requests of a plan that offloads a 2-layer conv chain of 16 x `size`^2 tensors, timed after warm-ups, and
    what each pair of `curves` predicts for them."""
    model = conv_chain(layers=2, channels=16, size=size).SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 16, size, size)).astype(np.float32)
    with Runner(PlanSlices((-1, 1), None, model, None, "all"), client) as runner:
        for _ in range(WARMUP):
            runner.run(x)
        results = [runner.run(x) for _ in range(n)]
    up, down = results[0].bytes_up, results[0].bytes_down
    measured = statistics.median(r.remote_ms - (r.server_ms or 0.0) for r in results)
    out: dict[str, Any] = {"bytes_up": up, "bytes_down": down, "network_ms": round(measured, 2)}
    for name, (uplink, downlink) in curves.items():
        predicted = round_trip_ms(uplink, downlink, up, down)
        out[name] = {"predicted_ms": round(predicted, 2), "predicted_over_measured": round(predicted / measured, 3)}
    return out


def one_delay(address: str, delay_ms: float | None, rate_Bps: float, n: int) -> dict[str, Any]:
    """Through a relay of `delay_ms` each way (None: straight to the server on loopback): the link profiled both ways
    (on an open echo stream, and with one echo call per transfer, side by side), then the requests of two plans
    beside what each profile predicts."""
    with contextlib.ExitStack() as stack:
        if delay_ms is not None:
            address = stack.enter_context(DelayRelay(address, delay_ms / 1e3, rate_Bps)).address
        client = stack.enter_context(Client(address))
        curves: dict[str, Link] = {}
        for name, stream in (("streamed", True), ("per_call", False)):
            config = NetProfileConfig(max_mb=2, upload_max_mb=0, min_time_s=0.2, stream=stream)
            profile = profile_network(client, config)
            curves[name] = (
                NetworkModel.from_dict(profile.uplink.model),
                NetworkModel.from_dict(profile.downlink.model),
            )
        return {
            "one_way_delay_ms": delay_ms,
            "curves_at_0_bytes_ms": {
                name: [round(up.predict_ms(0), 2), round(down.predict_ms(0), 2)] for name, (up, down) in curves.items()
            },
            "small": requests(client, curves, 16, n),
            "large": requests(client, curves, 128, n),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--delays-ms",
        default="direct,0,5,20",
        help="one-way delays of the relay, ms (comma-separated); direct: no relay, loopback straight to the server",
    )
    p.add_argument("--rate-mbps", type=float, default=160.0, help="the relay's rate each way, Mbit/s")
    p.add_argument("--requests", type=int, default=15, help="timed requests per plan")
    args = p.parse_args(argv)
    delays = [None if d == "direct" else float(d) for d in args.delays_ms.split(",")]
    with tempfile.TemporaryDirectory() as tmp, Server(ServerConfig(data_dir=Path(tmp), listen="127.0.0.1:0")) as srv:
        assert srv.address is not None
        runs = [one_delay(srv.address, d, args.rate_mbps * 1e6 / 8, args.requests) for d in delays]
    print(json.dumps({"rate_mbps": args.rate_mbps, "requests": args.requests, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`rr-edge run PATH --server ADDR --node NAME [--objective ..|--split I,J] --input X.np[yz] [--output Y] [--repeat K]
[--trace T.jsonl]`.

Plans (or takes the forced `--split`, predicted like any plan when the server can predict this node), then runs the
plan K times: head and tail locally, the middle on the server,
finishing locally when the server fails (`"fallback": true`; also while the server cannot be reached to plan at all:
then requests run the whole model locally until it answers). Splits change as plans do (`_planned_run`). Every
output is checked against the whole model run locally on the same input. `--trace` writes each request and switch
as it happens (`Trace`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from rich.table import Table

from rr_edge.blocks import BlockGraph, analyze
from rr_edge.client import Client
from rr_edge.commands._common import (
    add_energy_args,
    add_model_name_arg,
    add_ort_args,
    add_server_args,
    connect,
    make_meter,
    model_name,
    ort_settings,
    output_console,
    positive_float,
    positive_int,
    print_json,
)
from rr_edge.commands._interrupt import stop_requested
from rr_edge.commands._paths import output_path
from rr_edge.commands._planned_run import PREPARING, PlannedRun, Segment
from rr_edge.commands.plan import add_plan_args, build_plan, choice_options, warn_about_plan
from rr_edge.device import describe_device, registered_device, setup_changes
from rr_edge.errors import MeterError, ModelError, RoadRunnerError, ServerUnavailable
from rr_edge.meters.base import Meter, fill_window
from rr_edge.meters.model import resolve_power
from rr_edge.offload import (
    PlanReport,
    check_messages,
    gather_costs,
    local_outputs,
    make_runner,
    max_abs_diff,
    message_limit,
    plan_for_split,
    replan,
    replan_with_probe,
    validate_split,
)
from rr_edge.onnx_io import TensorInfo, load_model
from rr_edge.progress import progress_bars
from rr_edge.runner import Runner, RunnerConfig, RunResult, fallback_cause, modelled_mJ
from rr_edge.session import OrtSettings, array_fits
from rr_edge.slicing import Slicer, whole_model_bytes

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("run", help="run a model split between this node and the server")
    p.add_argument("path", metavar="PATH", help="ONNX model")
    add_server_args(
        p,
        timeout_note="; a request waits less for the server's answer unless --fixed-timeout",
    )
    add_model_name_arg(p)
    add_plan_args(p, amortize_default="--repeat")
    p.add_argument(
        "--split",
        metavar="I,J",
        help="force plan (I, J) instead of planning: blocks 0..I on this node (I = -1: none), I+1..J on the server, "
        "J+1.. on this node again; I = J runs everything here",
    )
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="X.npy",
        help="the request: an array (.npy), or an .npz archive of one array per input name (numpy.savez)",
    )
    p.add_argument(
        "--output",
        type=output_path,
        metavar="Y.npy",
        help="write the last request's output: .npy (the first output of a model with several), or .npz (all, by name)",
    )
    p.add_argument("--repeat", type=positive_int, default=1, metavar="K", help="requests to run (default %(default)s)")
    p.add_argument(
        "--trace",
        type=output_path,
        metavar="FILE.jsonl",
        help="write one JSON line per request and per split switch as the run goes (each line flushed)",
    )
    p.add_argument("--no-stream", action="store_true", help="one ModelInfer call per request instead of a stream")
    p.add_argument(
        "--fixed-timeout",
        action="store_true",
        help="wait the whole --timeout for every answer of the server (default: 4x a request's expected round trip "
        "+ 1 s, doubled after a wait that ran out, at most --timeout)",
    )
    p.add_argument(
        "--retry-interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="health check period in seconds while the server is down (default %(default)g)",
    )
    add_energy_args(p)
    add_ort_args(p)  # give the ones the node was profiled with: its predictions are of that setup
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: measured and predicted latency and energy"
    )
    p.set_defaults(func=run)


def _load_inputs(path: Path, wants: tuple[TensorInfo, ...]) -> dict[str, np.ndarray]:
    """The request's inputs by name, each checked against the model's: one array (.npy) for a model of one input, or
    an .npz archive of one array per input name (a model of one input takes an archive of one array, whatever its
    name)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.ndarray):  # an archive's members are read here, where their errors are caught
            with loaded:
                loaded = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # a truncated or damaged file
        raise RoadRunnerError(
            f"cannot read input {path} as a .npy array or an .npz archive (numpy.save / numpy.savez write them): "
            f"{_unreadable(exc)}"
        ) from None
    names = [want.name for want in wants]
    if isinstance(loaded, np.ndarray):
        if len(wants) != 1:
            raise RoadRunnerError(
                f"input {path} is one array; the model takes {len(wants)} inputs ({', '.join(names)}): give an .npz "
                "archive of one array per name (numpy.savez(path, name=array, ...))"
            )
        arrays = {names[0]: loaded}
    else:
        arrays = loaded
        if len(wants) == 1 and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        if sorted(arrays) != sorted(names):
            raise RoadRunnerError(f"input {path} holds arrays {sorted(arrays)}; the model takes {sorted(names)}")
    for want in wants:
        x, shape = arrays[want.name], want.shape or ()  # a model input's shape is fixed when the model loads
        if not array_fits(x, want.dtype, shape):
            raise RoadRunnerError(
                f"input {path}: {x.dtype} {list(x.shape)} does not match the model input {want.name!r} "
                f"{want.dtype} {list(shape)}"
            )
    return arrays


def _unreadable(exc: Exception) -> str:
    """Why numpy could not read an input. It reads any file that is not .npy nor .npz as a pickle, and says to "load
    it unsafely" for that and for an array of Python objects: never advise that."""
    text = str(exc)
    if "Object arrays" in text:
        return "it holds Python objects (dtype=object), not numbers"
    return "not a .npy or .npz file" if "allow_pickle" in text else text


def _energy(meter: Meter, runner: Runner, result: RunResult, reading_mJ: float | None) -> float:
    """Measured energy of the request window, or the power model's charge of its measured times (as `plan` predicts
    them: compute at active power, the server's run at idle, the transfers at tx / rx)."""
    if meter.measured and reading_mJ is not None:
        return reading_mJ
    power = meter.power  # type: ignore[attr-defined]  # only the model meter is not measured
    return modelled_mJ(result, power, runner.link.uplink, runner.link.downlink, runner.link.expected_cloud_ms)


def run_one(runner: Runner, x: Mapping[str, np.ndarray], meter: Meter) -> tuple[RunResult, float]:
    with meter.measure("compute") as reading:  # closed however the request ends
        result = runner.run(x)
    return result, _energy(meter, runner, result, reading.energy_mJ)


class RequestEnergy:
    """Energy per request, in request order (`energies`; None where the meter had failed: the request is kept).

    A real meter with a `min_window_s` (NVML, Jetson, RAPL) cannot resolve one short request: NVML's counter moves
    every ~20-100 ms and its window ends are aligned to updates. Consecutive requests are therefore metered together
    in windows of at least `min_window_s`, each getting the window's energy divided by the runs in it; a window the
    requests cannot fill (a short run, or the split changing) is topped up with extra runs of the same request, as
    the profiler does. Latency is the runner's own per-request timing, outside the meter's waits. The power model
    (`min_window_s` 0) meters each request alone (`run_one`).
    """

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.energies: list[float | None] = []
        self.windowed = meter.measured and meter.min_window_s > 0
        self._token: Any = None
        self._requests = 0  # requests in the open window (padding runs are counted apart)

    def run(self, runner: Runner, x: Mapping[str, np.ndarray], remaining: int) -> RunResult:
        """Run one request; `remaining`: how many more requests are to come."""
        if not self.windowed:
            result, energy = run_one(runner, x, self.meter)
            self.energies.append(energy)
            return result
        if self._token is None:
            self._token = self.meter.start_unless_failed("compute")
            self._requests = 0
        try:
            result = runner.run(x)
        except BaseException:
            self.abandon()
            raise
        if self._token is None:  # the meter has failed: the request is timed, not metered
            self.energies.append(None)
            return result
        self._requests += 1
        elapsed = self.meter.elapsed_s(self._token)
        rest_s = elapsed / self._requests * remaining  # the rest can fill a window of its own
        if remaining == 0 or (elapsed >= self.meter.min_window_s and rest_s >= self.meter.min_window_s):
            self.finish(runner, x)
        return result

    def finish(self, runner: Runner, x: Mapping[str, np.ndarray]) -> None:
        """Close the open window, first topping it up to `min_window_s` with runs of the same request."""
        if self._token is None:
            return
        try:
            padding = fill_window(self.meter, self._token, lambda: runner.run(x))
        except BaseException:
            self.abandon()
            raise
        token, self._token = self._token, None
        reading = self.meter.stop_unless_failed(token)
        if reading is None:  # the meter failed: the window's requests are kept without their energy
            self.energies.extend([None] * self._requests)
            return
        runs = self._requests + padding
        if padding:
            log.debug(
                "energy window topped up with %d extra runs to the meter's %g s", padding, self.meter.min_window_s
            )
        per_run = (reading.energy_mJ or 0.0) / runs
        self.energies.extend([per_run] * self._requests)

    def abandon(self) -> None:
        """Close the open window without counting it: a request failed in it (a window left open kept a Jetson
        sampler thread running for the node's life)."""
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(MeterError):
                self.meter.stop(token)


def measured(results: list[RunResult], energies: list[float | None]) -> dict[str, Any]:
    """What a run of requests measured: latency, the round trip to the server (of the requests it answered: None when
    none was), energy per request (of those metered: None when none was; `energy_unmetered_requests` counts the
    others, after the meter failed), fallbacks. Medians, and the latency's p90 and mean."""
    lat = np.array([r.total_ms for r in results])
    answered = [r.remote_ms for r in results if not r.fallback and r.remote_ms > 0]
    metered = [e for e in energies if e is not None]
    unmetered = {"energy_unmetered_requests": len(energies) - len(metered)} if len(metered) < len(energies) else {}
    return {
        "requests": len(results),
        "latency_ms": {
            "median": float(np.median(lat)),
            "p90": float(np.percentile(lat, 90)),
            "mean": float(lat.mean()),
        },
        "remote_ms_median": float(np.median(answered)) if answered else None,
        "energy_mJ": float(np.median(metered)) if metered else None,
        **unmetered,
        "fallback_requests": sum(r.fallback for r in results),
    }


def summarize(
    split: tuple[int, int], results: list[RunResult], energies: list[float | None], meter: Meter, diff: float
) -> dict[str, Any]:
    return {
        "split": list(split),
        **measured(results, energies),
        "energy_source": meter.source,
        "energy_measured": meter.measured,
        "fallback": any(r.fallback for r in results),
        "fallback_reasons": dict(Counter(fallback_cause(r.error) for r in results if r.fallback).most_common()),
        "max_abs_diff_vs_local": diff,
    }


def segment_summary(segment: Segment, results: list[RunResult], energies: list[float | None]) -> dict[str, Any]:
    """A segment's requests measured, and predicted per request (the plan's latency and energy without its share
    of the upload, which no request pays)."""
    span = slice(segment.first, segment.end)
    out = {"split": list(segment.split), **measured(results[span], energies[span])}
    if segment.report is not None:
        p, share = segment.report.chosen, upload_share(segment.report)
        latency_ms, energy_mJ = p.latency_ms - share["weight_upload_ms"], p.energy_mJ - share["weight_upload_mJ"]
        out["predicted"] = {
            "latency_ms": latency_ms, "energy_mJ": energy_mJ, "energy_source": segment.report.costs.energy_source,
        }  # fmt: skip
    return out


class Trace:
    """`--trace FILE.jsonl`: one JSON object a line for every request (`request`) and every split switch (`switch`),
    flushed as written, so that whoever watches the run from outside (a fault injected once N requests are in,
    `tools/bench_faults.py`) or a run killed midway has every line up to then. `t_s` is seconds on the monotonic
    clock since the trace was opened, just before the first request. Without a path it writes nothing."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:  # checked writable when the command line was read (`output_path`)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")
        self._start = time.monotonic()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def request(self, k: int, split: tuple[int, int], result: RunResult, served_at: float) -> None:
        """Request `k` (0-based), run on `split`, served at `served_at` (`time.monotonic()`)."""
        self._write({
            "event": "request", "k": k, "t_s": served_at - self._start, "split": list(split),
            "fallback": result.fallback, "total_ms": result.total_ms, "remote_ms": result.remote_ms,
            "error": result.error,
        })  # fmt: skip

    def switch(self, done: int, old: tuple[int, int], new: tuple[int, int]) -> None:
        """A switch after `done` requests; `new` may be `old` (a plan made late that keeps the split: a new runner)."""
        line = {"event": "switch", "t_s": time.monotonic() - self._start, "k": done, "from": list(old), "to": list(new)}
        self._write(line)

    def _write(self, line: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()


def forced_plan(
    args: argparse.Namespace, client: Client, graph: BlockGraph, slicer: Slicer, split: tuple[int, int]
) -> PlanReport | None:
    """The plan report with `--split` as its chosen plan, for its prediction; None (a warning says why) when the
    server cannot predict this node: the split then runs unpredicted."""
    power, _ = resolve_power(args.power_config, args.device_class)
    try:
        costs = gather_costs(client, args.node, graph, power, wait_s=args.wait)
        report = plan_for_split(
            client, graph, costs, slicer, split, preloaded=args.preloaded, amortize_over=args.amortize or args.repeat
        )
    except RoadRunnerError as exc:  # no profile of this node or its link yet, or no server
        log.warning("no prediction for --split %d,%d: %s", *split, exc)
        return None
    warn_about_plan(report, "run")
    return report


def upload_share(report: PlanReport) -> dict[str, float]:
    """The chosen plan's per-request share of its slice upload (`weight_upload_ms`, `weight_upload_mJ`)."""
    return {k: report.chosen.breakdown.get(k, 0.0) for k in ("weight_upload_ms", "weight_upload_mJ")}


def reference_outputs(
    settings: OrtSettings, model: onnx.ModelProto, path: Path, x: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The whole model run locally on the request, which every request's outputs are compared with: from `path` when
    the model is over protobuf's 2 GiB limit in memory (ONNX Runtime reads the file and its external data itself;
    serializing a 2.2 GB model failed with protobuf's EncodeError: review)."""
    try:
        data = whole_model_bytes(model, str(path))
    except ModelError:  # its only error: over the limit
        return local_outputs(settings, str(path), x)
    return local_outputs(settings, data, x)


def warn_about_setup(client: Client, node: str, settings: OrtSettings) -> None:
    """A warning naming what differs between the setup `node` was profiled with (its registered descriptor) and this
    run's: the node's predictions, which plan the run, are of that setup (intra-op threads alone change a block's
    latency by up to the core count). Nothing when the server does not answer or does not know the node."""
    try:
        registered = registered_device(client, node)
    except RoadRunnerError as exc:
        log.debug("cannot compare this run's setup with node %r's: %s", node, exc)
        return
    changes = {} if registered is None else setup_changes(registered, describe_device(settings))
    if changes:
        log.warning(
            "node %r was profiled with another setup than this run's (%s): its predictions are of that setup; give "
            "run the --threads, --provider and --graph-optimization it was profiled with, or profile this setup",
            node,
            ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()),
        )


def run(args: argparse.Namespace) -> int:
    forced = args.split is not None  # an empty --split is refused by validate_split, not taken for none
    if forced and (steering := choice_options(args)):
        raise RoadRunnerError(f"--split forces the plan: it takes no {', '.join(steering)}")
    settings = ort_settings(args)
    model = load_model(args.path)
    graph = analyze(model, model_name(args))
    slicer = Slicer(model, graph)
    x = _load_inputs(args.input, graph.inputs)
    expected = reference_outputs(settings, model, Path(args.path), x)
    with connect(args) as client, make_meter(args, gpu_work=settings.uses_gpu) as meter:
        report = None
        if forced:
            split = validate_split(args.split, graph)
            if split[0] < split[1]:
                with contextlib.suppress(ServerUnavailable):  # checked again by the server when it runs
                    check_messages(graph, split, message_limit(client, client.server_info()))
            report = forced_plan(args, client, graph, slicer, split)
        else:
            try:
                report = build_plan(args, client, model, graph, slicer, amortize_over=args.repeat)
                split = (report.chosen.i, report.chosen.j)
                warn_about_plan(report, "run")
            except ServerUnavailable as exc:  # no plan without the server: every request runs locally
                log.warning("cannot plan (is rr-server running at %s?), running it all locally: %s", args.server, exc)
                split = (len(graph.blocks) - 1, len(graph.blocks) - 1)
        if report is not None:  # planned with the node's predictions
            warn_about_setup(client, args.node, settings)
        config = RunnerConfig(
            timeout_s=args.timeout,
            retry_interval_s=args.retry_interval,
            stream=not args.no_stream,
            adaptive_deadline=not args.fixed_timeout,
        )

        def runner_for(split: tuple[int, int], report: PlanReport | None, connect_later: bool) -> Runner:
            return make_runner(
                slicer,
                graph,
                split,
                client,
                config=config,
                settings=settings,
                report=report,
                connect_later=connect_later,
            )

        def plan(remaining: int) -> PlanReport:  # between requests: no waiting for predictions
            return build_plan(
                argparse.Namespace(**{**vars(args), "wait": 0.0}), client, model, graph, slicer, remaining
            )

        def probe(report: PlanReport, remaining: int) -> PlanReport:
            return replan_with_probe(client, report, graph, None if args.amortize else remaining)

        def plan_again(report: PlanReport, runner: Runner, remaining: int) -> PlanReport:
            new = replan(report, graph, runner, None if args.amortize else remaining)
            return dataclasses.replace(new, chosen=new.table.plan(*split)) if forced else new  # re-predicted

        energy = RequestEnergy(meter)
        planned = PlannedRun(
            runner_for,
            None if forced else plan,
            plan_again,
            split,
            report,
            energy,
            x,
            args.retry_interval,
            probe=None if forced else probe,
        )
        results: list[RunResult] = []
        diff = 0.0  # the largest difference of any request's outputs from the whole model run locally
        fallbacks = 0
        start = time.perf_counter()
        with (
            Trace(args.trace) as trace,
            stop_requested("the request in flight") as stop,
            progress_bars(not args.json) as progress,
        ):
            try:
                for k in range(args.repeat):
                    if stop.is_set():
                        break
                    segment, runner = planned.segments[-1], planned.runner  # the ones this request runs on
                    preparing = planned.preparing
                    result = planned.request(remaining=args.repeat - 1 - k)
                    if segment.report is None and not forced:  # no plan yet: it ran locally
                        why = segment.no_plan if preparing is None else PREPARING.format(*preparing.split)
                        result.fallback, result.error = True, result.error or why
                    trace.request(k, segment.split, result, planned.served_at)
                    if planned.runner is not runner:  # a switch after it (`PlannedRun._switch_when_ready`)
                        trace.switch(k + 1, segment.split, planned.split)
                    diff = float(np.max([diff, max_abs_diff(result.outputs, expected)]))  # NaN stays NaN
                    outputs, result.outputs = result.outputs, {}  # compared: only the last request's are kept
                    results.append(result)
                    fallbacks += result.fallback
                    progress("requests", k + 1, args.repeat, "split {},{}; {} local".format(*planned.split, fallbacks))
            finally:
                planned.close()
        wall_s = time.perf_counter() - start
        energies = energy.energies
    if not results:  # interrupted before the first request ended
        return stop.exit_code
    ran = [segment for segment in planned.segments if segment.end > segment.first]  # Ctrl-C came before a switch
    summary = summarize(ran[-1].split, results, energies, meter, diff)
    summary["wall_s"] = wall_s
    summary["splits_used"] = [list(segment.split) for segment in ran]
    summary["segments"] = [segment_summary(segment, results, energies) for segment in ran]
    summary["upload_ms"] = planned.upload_ms  # making the middle slices ready (upload, open), once, not in any request
    summary["slices_made_ready"] = planned.made_ready
    if len(results) < args.repeat:  # Ctrl-C or SIGTERM: the requests served until then
        summary["interrupted"] = {"requests_asked": args.repeat, "signal": stop.signal_name}
    if (report := ran[-1].report) is not None:  # the plan running at the end; its upload share is in its figures
        summary["predicted"] = {
            **report.chosen.to_dict(), **upload_share(report), "energy_source": report.costs.energy_source,
        }  # fmt: skip
        summary["predicted_upload_ms"] = planned.predicted_upload_ms
        summary["replans"] = planned.replans  # after network drift; a re-planned slice already uploaded is free
        summary["amortize_over"] = report.inputs.amortize_over
    if args.output:  # at exactly that path (np.save of a name would add .npy)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("wb") as f:
            if args.output.suffix == ".npz":
                np.savez(f, **outputs)  # type: ignore[arg-type]  # numpy's stub takes the keyword for a flag
            else:
                np.save(f, next(iter(outputs.values())))
    if args.json:
        print_json(summary)
    else:
        print_summary(graph.model, summary)
    return stop.exit_code if "interrupted" in summary else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def print_summary(model: str, s: dict[str, Any]) -> None:
    """The run for people: measured latency and energy next to the plan's prediction, then fallbacks and accuracy."""
    table = Table(title=f"{model}: {_count(s['requests'], 'request')} in {s['wall_s']:.2f} s", title_justify="left")
    for column in ("", "i,j", "median ms", "p90 ms", "round trip ms", "energy mJ (source)"):
        table.add_column(column, justify="right" if column else "left")
    for segment in s["segments"]:  # one split after the other when a re-plan switched
        lat, split = segment["latency_ms"], "{},{}".format(*segment["split"])
        energy = "-" if segment["energy_mJ"] is None else f"{segment['energy_mJ']:.1f} ({s['energy_source']})"
        median, p90 = f"{lat['median']:.2f}", f"{lat['p90']:.2f}"
        remote = "-" if segment["remote_ms_median"] is None else f"{segment['remote_ms_median']:.2f}"
        table.add_row("measured", split, median, p90, remote, energy)
        if "predicted" in segment:  # the plan's energy has its own source: the profile's, and the power model's
            p = segment["predicted"]
            energy = f"{p['energy_mJ']:.1f} ({p['energy_source']})"
            table.add_row("predicted", split, f"{p['latency_ms']:.2f}", "", "", energy)

    console = output_console()
    console.print(table)
    splits = " -> ".join("{},{}".format(*segment["split"]) for segment in s["segments"])
    if any(i != j for i, j in (segment["split"] for segment in s["segments"])):  # i == j: no middle slice to upload
        ready = s["slices_made_ready"]
        if ready:
            upload = f"middle slice made ready {_times(ready)} (upload, open): {s['upload_ms']:.2f} ms"
        else:
            upload = f"middle slice never made ready on the server ({s['upload_ms']:.2f} ms spent trying)"
        if "predicted_upload_ms" in s:
            upload += f"; upload predicted {s['predicted_upload_ms']:.2f} ms"
        console.print(upload)
    console.print(
        f"fallback: {s['fallback_requests']} of {s['requests']} requests finished locally; "
        f"max |output - local| {s['max_abs_diff_vs_local']:.2g}" + (f"; splits used {splits}" if "->" in splits else "")
    )
    for reason, count in list(s.get("fallback_reasons", {}).items())[:3]:  # the most frequent first
        console.print(f"  {count} finished locally: {reason}")
    if s.get("replans"):
        console.print(f"planned again {_times(s['replans'])} as the measured network drifted from the plan's")
    if s.get("energy_unmetered_requests"):
        console.print(f"energy: the meter failed; {_count(s['energy_unmetered_requests'], 'request')} not metered")
    if "interrupted" in s:
        by = "" if s["interrupted"]["signal"] == "SIGINT" else f" by {s['interrupted']['signal']}"
        console.print(f"interrupted{by}: {s['requests']} of {s['interrupted']['requests_asked']} requests served")

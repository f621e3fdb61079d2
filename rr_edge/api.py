"""Python API for edge apps: connect as a node, profile, plan, and call the plan like a function.

Synchronous::

    import rr_edge

    with rr_edge.connect("cloud:8001", node="camera-1") as node:
        node.netprofile(max_mb=64)                       # once per link
        node.profile("resnet18.onnx")                     # a 30% sample of the model's blocks
        plan = node.plan("resnet18.onnx", objective="latency")
        run = node.runner("resnet18.onnx", plan)          # closed with the node, or by run.close()
        for image in images:
            logits = run(image)["output"]                 # outputs by name; run.run(x) also says fallback/timings
            if run.replan_needed:                         # the network drifted from the plan's
                plan = node.replan("resnet18.onnx", plan, run)
                run = node.switch("resnet18.onnx", run, plan)  # the old runner closed, unless the split stayed

asyncio (blocking work runs in worker threads, the event loop stays free)::

    async with rr_edge.connect_async("cloud:8001", node="camera-1") as node:
        plan = await node.plan("resnet18.onnx")
        runner = await node.runner("resnet18.onnx", plan)
        outputs = await runner(image)

A model is analysed, profiled and run at batch 1: a symbolic batch dimension (``["N", 3, 224, 224]``) is fixed to 1
when the model is loaded, so a runner takes one image per request (docs/usage.md, section 2).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import operator
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rr_edge.blocks import BlockGraph, analyze
from rr_edge.client import Client, ClientOptions
from rr_edge.costmodel import check_amortize_over
from rr_edge.errors import ArgumentError, MeterError, ServerUnavailable
from rr_edge.meters import Meter, MeterOptions, select_meter
from rr_edge.meters.model import PowerSpec, resolve_power
from rr_edge.meters.select import CHOICES
from rr_edge.netprofile import NetProfileConfig, run_netprofile
from rr_edge.offload import PlanReport, gather_costs, make_runner, plan_with_server_cache, replan
from rr_edge.onnx_io import load_model
from rr_edge.planner import check_objective
from rr_edge.profiler import ProfileConfig, ProfileResult, run_profile, wait_for_cloud_timings
from rr_edge.profiles import NetworkProfile
from rr_edge.progress import Progress
from rr_edge.runner import Runner, RunnerConfig, RunResult
from rr_edge.session import OrtSettings
from rr_edge.slicing import Slicer
from rr_proto.limits import id_problem

__all__ = ["AsyncEdgeNode", "AsyncRunner", "EdgeNode", "connect", "connect_async"]


@dataclass
class _Model:
    model: onnx.ModelProto
    graph: BlockGraph
    slicer: Slicer
    version: tuple[int, int] | None  # the file's (size, mtime_ns) when loaded


class EdgeNode:
    """This device as a node of a RoaD-RuNNer server. A context manager; its methods and its runners may be called
    from several threads (or, through AsyncEdgeNode, concurrent tasks): the energy meter is made once and a model is
    loaded once. Profiling and network profiling time this device, so run them one at a time."""

    def __init__(
        self,
        server: str,
        node: str,
        *,
        options: ClientOptions | None = None,
        settings: OrtSettings | None = None,
        energy: str = "auto",
        meter_options: MeterOptions | None = None,
        power: PowerSpec | None = None,
    ) -> None:
        _check_type(node, str, "node")
        if (problem := id_problem(node)) is not None:
            raise ArgumentError(f"node: a node id {problem}: {node!r:.60}")  # found late, and misread, by the server
        _check_type(server, str, "server")
        for value, kind, what in (
            (options, ClientOptions, "options"),
            (settings, OrtSettings, "settings"),
            (meter_options, MeterOptions, "meter_options"),
            (power, PowerSpec, "power"),
        ):
            _check_type(value, kind, what, optional=True)
        if energy not in CHOICES:
            raise MeterError(f"unknown energy meter {energy!r} (choose from {', '.join(CHOICES)})")  # as at first use
        self.node = node
        self.client = Client(server, options)
        self.settings = settings or OrtSettings()
        self._energy, self._meter_options = energy, meter_options or MeterOptions()
        self._meter: Meter | None = None
        self.power = power or resolve_power(self._meter_options.power_config, self._meter_options.device_class)[0]
        self._models: dict[str, _Model] = {}
        self._meter_lock = threading.Lock()  # the meter is made once, whatever calls at the same time
        self._load_lock = threading.Lock()  # and each model loaded once
        self._runners: weakref.WeakSet[Runner] = weakref.WeakSet()  # closed with the node

    @property
    def meter(self) -> Meter:
        with self._meter_lock:
            if self.client.closed:  # a meter made now would outlive the node: nothing would close it
                raise ServerUnavailable("EdgeNode: this node is closed")
            if self._meter is None:
                gpu_work = self.settings.resolved().uses_gpu  # NVML before RAPL when the work runs on the GPU
                self._meter = select_meter(self._energy, self._meter_options, gpu_work=gpu_work)
            return self._meter

    def _load(self, model: str | Path) -> _Model:
        """The model at `model`, analysed once per version of the file (its size and modification time: a file
        replaced on disk is loaded again)."""
        path = Path(model).resolve()
        try:
            stat = path.stat()
        except OSError:
            stat = None  # load_model says what is wrong with the path
        version = (stat.st_size, stat.st_mtime_ns) if stat else None
        with self._load_lock:
            cached = self._models.get(str(path))
            if cached is None or cached.version != version:
                proto = load_model(model)
                graph = analyze(proto, Path(model).stem)
                cached = self._models[str(path)] = _Model(proto, graph, Slicer(proto, graph), version)
            return cached

    def blocks(self, model: str | Path) -> BlockGraph:
        """The model's atomic blocks."""
        return self._load(model).graph

    def netprofile(
        self, max_mb: float = 64, config: NetProfileConfig | None = None, progress: Progress | None = None
    ) -> NetworkProfile:
        """Profile the link to the server (both directions) and report it; `progress(stage, done, total, label)`
        is called as it goes (`with rr_edge.progress.progress_bars() as bars: node.netprofile(progress=bars)` draws
        it)."""
        cfg = config or NetProfileConfig(max_mb=max_mb)
        return run_netprofile(self.client, self.node, cfg, meter=self.meter, progress=progress)

    def profile(
        self,
        model: str | Path,
        sample: float = 0.3,
        seed: int | None = None,
        wait_cloud_s: float = 0.0,
        progress: Progress | None = None,
    ) -> ProfileResult:
        """Profile a sample of the model's blocks not measured yet on this node and report it (`progress` as for
        `netprofile`); then wait up to `wait_cloud_s` for the server to time the uploaded slices itself (so that a
        plan right after uses them)."""
        m = self._load(model)
        config = ProfileConfig(sample=sample, seed=seed)
        result = run_profile(
            self.client,
            self.node,
            m.model,
            m.graph.model,
            settings=self.settings,
            meter=self.meter,
            config=config,
            progress=progress,
        )
        if wait_cloud_s > 0:
            wait_for_cloud_timings(self.client, m.graph, result, wait_cloud_s)
        return result

    def plan(
        self,
        model: str | Path,
        objective: str = "latency",
        *,
        slo_ms: float | None = None,
        preloaded: bool = False,
        amortize_over: int = 1,
        wait_s: float = 10.0,
    ) -> PlanReport:
        """Predictions from the server, every plan (i, j), the Pareto set, the chosen plan and the baselines.

        Waits up to `wait_s` for the server's background refit after a fresh profile.
        """
        check_objective(objective, slo_ms)  # before the server is asked anything
        check_amortize_over(amortize_over)
        if isinstance(wait_s, bool) or not (isinstance(wait_s, numbers.Real) and 0 <= wait_s < math.inf):  # NaN, inf
            raise ArgumentError(f"wait_s must be a finite number of seconds >= 0, got {wait_s!r}")
        m = self._load(model)
        costs = gather_costs(self.client, self.node, m.graph, self.power, wait_s)
        return plan_with_server_cache(
            self.client,
            m.model,
            m.graph,
            costs,
            m.slicer,
            objective=objective,
            slo_ms=slo_ms,
            preloaded=preloaded,
            amortize_over=amortize_over,
        )

    def replan(self, model: str | Path, report: PlanReport, runner: Runner) -> PlanReport:
        """Plan again with the network `runner` measured (when `runner.replan_needed`); no new server queries. The
        runner's drift counts from this plan on (`replan_needed` is False until the network moves again); `switch`
        gives the runner of the new plan's split."""
        _check_type(report, PlanReport, "report")
        _check_type(runner, Runner, "runner")
        new = replan(report, self._load(model).graph, runner)
        runner.mark_planned()
        return new

    def switch(self, model: str | Path, runner: Runner, report: PlanReport) -> Runner:
        """The runner of `report`'s chosen plan: `runner` itself when it runs that split already, else a new runner
        of it (its slice uploaded and opened, as `runner` does), `runner` then closed. When the server refuses the new
        plan's slice, ServerError, and `runner` stays open and usable."""
        _check_type(runner, Runner, "runner")
        if not isinstance(report, PlanReport):  # a split goes to `runner`; here it met report.chosen: AttributeError
            raise TypeError(f"switch takes the PlanReport of `plan` or `replan`, not {report!r}")
        if (report.chosen.i, report.chosen.j) == runner.slices.split:
            return runner
        new = self.runner(model, report, runner.config)
        runner.close()
        return new

    def runner(
        self, model: str | Path, plan: PlanReport | tuple[int, int], config: RunnerConfig | None = None
    ) -> Runner:
        """A callable runner of the plan (a PlanReport's chosen plan, or a split (i, j)). A plan that offloads has its
        middle slice uploaded (if needed) and opened on the server here, before the first request; a server that
        refuses the slice (too large, or its ONNX Runtime cannot open it) raises ServerError, an unreachable one
        leaves the runner running locally until it answers. Without `config`, a request waits for its answer at most
        the client's `ClientOptions.timeout_s`, less with the plan's network models
        (`RunnerConfig.adaptive_deadline`)."""
        if isinstance(plan, PlanReport):
            report, split = plan, (plan.chosen.i, plan.chosen.j)
        else:
            try:
                i, j = (operator.index(k) for k in plan)  # ints, numpy's too; not "2,9" nor 2.0
            except (TypeError, ValueError):
                raise TypeError(f"plan is a PlanReport or a split (i, j) of two ints, not {plan!r}") from None
            report, split = None, (i, j)
        if config is not None and not isinstance(config, RunnerConfig):
            raise TypeError(f"config is a RunnerConfig, not {type(config).__name__} (RunnerConfig(**{config!r})?)")
        if self.client.closed:  # else the runner would start, and stay, local
            raise ServerUnavailable("EdgeNode.runner: this node is closed")
        m = self._load(model)
        config = config or RunnerConfig(timeout_s=self.client.options.timeout_s)
        runner = make_runner(
            m.slicer, m.graph, split, self.client, config=config, settings=self.settings, report=report
        )
        self._runners.add(runner)
        return runner

    def close(self) -> None:
        """Close the connection, the runners made here (their streams and threads; a runner used after it finishes
        its requests locally, `error` saying the client is closed) and the energy meter (NVML handle, sampler
        threads)."""
        try:
            # The idle runners first (their streams end cleanly), then the connection, which cancels the calls of
            # requests in flight: they finish locally at once instead of holding close() up to their deadline (30 s
            # on a hung server); then the runners that were busy.
            busy = [runner for runner in list(self._runners) if not runner.close_if_idle()]
            self.client.close()
            for runner in busy:
                runner.close()
        finally:
            with self._meter_lock:
                if self._meter is not None:
                    self._meter.close()
                    self._meter = None

    def __enter__(self) -> EdgeNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_type(value: Any, kind: type, what: str, optional: bool = False) -> None:
    """TypeError naming what `value` should be: a wrong type met an attribute deep inside (AttributeError)."""
    if isinstance(value, kind) or (optional and value is None):
        return
    hint = ""
    if isinstance(value, AsyncRunner | Runner):
        hint = " (an AsyncRunner goes to AsyncEdgeNode, a Runner to EdgeNode; AsyncRunner.sync is its Runner)"
    elif isinstance(value, Mapping):
        hint = f" ({kind.__name__}(**{what})?)"
    raise TypeError(
        f"{what} is a{'n' * (kind.__name__[0] in 'AEIOU')} {kind.__name__}, not {type(value).__name__}{hint}"
    )


def connect(server: str, node: str, **kw: Any) -> EdgeNode:
    """Connect to a server as `node` (see EdgeNode for the options)."""
    return EdgeNode(server, node, **kw)


class AsyncRunner:
    """`await runner(x)`: the runner's blocking work in a worker thread."""

    def __init__(self, runner: Runner) -> None:
        self.sync = runner

    async def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> RunResult:
        return await asyncio.to_thread(self.sync.run, inputs)

    async def __call__(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        return (await self.run(inputs)).outputs

    @property
    def replan_needed(self) -> bool:
        return self.sync.replan_needed

    def mark_planned(self) -> None:
        self.sync.mark_planned()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncEdgeNode:
    """asyncio face of EdgeNode: the same methods, awaitable; `runner` returns an AsyncRunner."""

    def __init__(self, server: str, node: str, **kw: Any) -> None:
        self.sync = EdgeNode(server, node, **kw)

    async def blocks(self, model: str | Path) -> BlockGraph:
        return await asyncio.to_thread(self.sync.blocks, model)

    async def netprofile(self, *args: Any, **kw: Any) -> NetworkProfile:
        return await asyncio.to_thread(self.sync.netprofile, *args, **kw)

    async def profile(self, *args: Any, **kw: Any) -> ProfileResult:
        return await asyncio.to_thread(self.sync.profile, *args, **kw)

    async def plan(self, *args: Any, **kw: Any) -> PlanReport:
        return await asyncio.to_thread(self.sync.plan, *args, **kw)

    async def replan(self, model: str | Path, report: PlanReport, runner: AsyncRunner) -> PlanReport:
        _check_type(runner, AsyncRunner, "runner")
        return await asyncio.to_thread(self.sync.replan, model, report, runner.sync)

    async def switch(self, model: str | Path, runner: AsyncRunner, report: PlanReport) -> AsyncRunner:
        _check_type(runner, AsyncRunner, "runner")
        new = await asyncio.to_thread(self.sync.switch, model, runner.sync, report)
        return runner if new is runner.sync else AsyncRunner(new)

    async def runner(self, *args: Any, **kw: Any) -> AsyncRunner:
        return AsyncRunner(await asyncio.to_thread(self.sync.runner, *args, **kw))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncEdgeNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def connect_async(server: str, node: str, **kw: Any) -> AsyncEdgeNode:
    """asyncio variant of `connect`."""
    return AsyncEdgeNode(server, node, **kw)

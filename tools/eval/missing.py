"""What a run did not measure, from its raw outputs (pure).

    execute   a device whose execute worker failed (the harness's reason, kept in failed.json) and a model that failed
              inside a device's worker (the worker's `errors`): their plans are in no figure or table
    settle    the cloud profiler had not timed every reported slice, or every model whole, when `settle` gave up: the
              plans were costed with CF predictions where the cloud row should have held measurements

`collect` exits non-zero when anything is missing, after writing what it measured; eval.json keeps it under
meta.missing and the report lists it at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def settle_shortfall(settled: Mapping[str, Any], n_models: int) -> str | None:
    """Why the cloud row is incomplete, or None when the profiler timed every reported slice and every model whole."""
    measured, expected, whole = settled["measured"], settled["expected"], settled["models_timed_whole"]
    if measured >= expected and whole >= n_models:
        return None
    return (
        f"the cloud profiler had timed {measured} of {expected} reported slices and {whole} of {n_models} models "
        f"whole when settle gave up after {settled['waited_s']:.0f} s; the plans were costed with predictions in "
        "their place"
    )


def of_run(
    classes: Sequence[str],
    n_models: int,
    settled: Mapping[str, Any] | None,
    execute: Mapping[str, Mapping[str, Any]],
    failed: Mapping[str, str],
) -> dict[str, Any]:
    """{"execute": {device: reason, or {model: error}}, "settle": reason}, holding only what is missing.

    `settled`: the settle worker's output (None for a run collected before it was kept); `execute`: device -> execute
    worker output; `failed`: device -> why its execute worker failed (the harness's message)."""
    gaps: dict[str, Any] = {}
    devices: dict[str, Any] = {d: out["errors"] for d, out in execute.items() if out.get("errors")}
    devices.update({d: failed.get(d, "the execute worker wrote no output") for d in classes if d not in execute})
    if devices:
        gaps["execute"] = devices
    short = settle_shortfall(settled, n_models) if settled is not None else None
    if short is not None:
        gaps["settle"] = short
    return gaps


def describe(gaps: Mapping[str, Any]) -> list[str]:
    """One line per gap, for the log and the report."""
    lines = []
    for device, what in gaps.get("execute", {}).items():
        if isinstance(what, str):
            lines.append(f"{device}: no plan measured ({what})")
        else:
            lines += [f"{device}/{model}: no plan measured ({error})" for model, error in what.items()]
    if "settle" in gaps:
        lines.append(f"cloud row: {gaps['settle']}")
    return lines

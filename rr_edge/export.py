"""Export torchvision classifiers (random weights) or a user's torch module to ONNX.

Prefers the torch.export-based exporter (`dynamo=True`, opset 18, needs `onnxscript`): its graphs
are far cleaner (BatchNorm folded, no shape side chains), which gives many more single-tensor cut
points. Falls back to the TorchScript exporter when it fails; a model whose tracing warns (data-dependent
control flow, which tracing would fix to the example's branch) is refused instead. Output is one
self-contained .onnx file (its weights in `<name>.data` beside it when over `_MAX_INLINE_BYTES`), written
atomically, validated by loading it back and by running it in ONNX Runtime against torch on a fresh random input
(`CHECK_RTOL`, `CHECK_ATOL`).

torch and torchvision are the `zoo` extra; they are imported lazily.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rr_edge.errors import ModelError
from rr_edge.onnx_io import load_model, public_file_mode, save_model

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_OPSET",
    "EXPORT_FORMAT",
    "SEED",
    "classification_models",
    "export_model",
]

DEFAULT_INPUT_SIZE = 224
DEFAULT_BATCH = 1
DEFAULT_OPSET = 18
SEED = 0
EXPORT_FORMAT = 1  # bump when exported graphs change (caches of exported models key on it)
CHECK_RTOL = 1e-3  # export check: ONNX Runtime vs torch, relative to each element
CHECK_ATOL = 1e-4  # ... and absolute, as a fraction of the output's largest magnitude
_MAX_INLINE_BYTES = 1_800_000_000  # protobuf limit is 2 GiB; above this, weights go to external data


def _torch() -> tuple[Any, Any]:
    try:
        import torch
        import torchvision
    except ImportError as exc:
        raise ModelError(
            f"export needs torch and torchvision ({exc.name} missing): pip install 'roadrunner[zoo]'"
        ) from None
    return torch, torchvision


def classification_models() -> list[str]:
    """Names of torchvision's classification models."""
    _, torchvision = _torch()
    return sorted(torchvision.models.list_models(module=torchvision.models))


# torchvision models built for one input size, and the keyword that sets it (the others adapt to any size)
_SIZE_KEYWORDS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "vit_": ("image_size", int),
    "maxvit_": ("input_size", lambda n: (n, n)),
}


def _zoo_model(name: str, input_size: int) -> Any:
    _, torchvision = _torch()
    names = classification_models()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ModelError(f"unknown torchvision classification model {name!r}{hint}")
    with warnings.catch_warnings():  # inception/googlenet warn about their future default init
        warnings.simplefilter("ignore", FutureWarning)
        size = {key: value(input_size) for prefix, (key, value) in _SIZE_KEYWORDS.items() if name.startswith(prefix)}
        try:
            return torchvision.models.get_model(name, weights=None, **size)
        except (ValueError, AssertionError, TypeError, RuntimeError) as exc:  # e.g. a size its patches do not divide
            why = _one_line(exc)
            raise ModelError(f"torchvision cannot build {name} for --input-size {input_size}: {why}") from None


_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # torch.export colours parts of its messages


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(_ANSI_STYLE.sub("", f"{type(exc).__name__}: {exc}").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _first_on_sys_path(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path inside the block only."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_file(path: Path) -> Any:
    """Import a .py file as a module registered in sys.modules (dataclasses, pickling and typing resolve their
    module there), under its stem unless another module already has that name."""
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        name = f"_rr_user_{abs(hash(str(path))):x}_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ModelError(f"--from: cannot import {path}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _user_model(spec: str) -> Any:
    """`MODULE:CALLABLE` or `path/to/file.py:CALLABLE`; the callable returns (or is) an nn.Module class."""
    torch, _ = _torch()
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"--from expects MODULE:CALLABLE, got {spec!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ModelError(f"--from: no such file {path}")
            with _first_on_sys_path(path.resolve().parent):  # its sibling modules import as in a script
                module = _import_file(path.resolve())
        else:
            with _first_on_sys_path(Path.cwd()):
                module = importlib.import_module(module_name)
    except ModelError:
        raise
    except Exception as exc:  # user code: any import failure is a bad --from argument
        raise ModelError(f"--from: cannot import {module_name!r}: {_one_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--from: {module_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as exc:
        raise ModelError(f"--from: {spec}() failed: {_one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"--from: {spec}() returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def export_model(
    name: str | None,
    output: str | os.PathLike[str],
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    batch: int = DEFAULT_BATCH,
    from_callable: str | None = None,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
) -> Path:
    """Export a torchvision classifier `name` (or `from_callable`'s module) to `output`.

    Input is `batch x 3 x input_size x input_size` float32, named "input"; output is "output".
    Weights are random (seeded). Returns the written path.
    """
    if input_size < 1 or batch < 1:
        raise ModelError(f"--input-size and --batch must be positive (got {input_size}, {batch})")
    torch, _ = _torch()
    torch.manual_seed(SEED)
    if from_callable:
        model = _user_model(from_callable)
    elif name:
        model = _zoo_model(name, input_size)
    else:
        raise ModelError("give a torchvision model name or --from MODULE:CALLABLE")
    model.eval()
    label = from_callable or name
    example = _random_input(torch, (batch, 3, input_size, input_size))
    try:  # no exporter can help a model that does not run (and theirs would bury the reason in their logs)
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001 - the model's own code raises anything
        shape = "x".join(str(d) for d in example.shape)
        raise ModelError(f"{label} does not run on a {shape} input: {_one_line(exc)}") from None
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = n_bytes > _MAX_INLINE_BYTES
    errors: list[str] = []
    attempts: list[tuple[str, Callable[[Path], None]]] = []
    if dynamo:
        attempts.append(("dynamo", lambda p: _export(torch, model, example, p, True, opset, external)))
    attempts.append(("torchscript", lambda p: _export(torch, model, example, p, False, opset, external)))
    check_input = _random_input(torch, tuple(example.shape))  # a fresh input, not the one the exporter saw
    for kind, fn in attempts:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:  # the temporary goes whatever happens, a Ctrl-C in the exporter included (once moved, nothing is left)
            if _export_to(torch, fn, tmp, label, kind, errors):
                _check_against_torch(torch, model, check_input, tmp)
                if external:
                    _move_with_data(tmp, out)
                else:
                    public_file_mode(tmp)
                    os.replace(tmp, out)
                log.info("exported %s with the %s exporter to %s", label, kind, out)
                return out
        finally:
            _cleanup(tmp)
    raise ModelError(f"export of {label} failed: " + "; ".join(errors))


def _random_input(torch: Any, shape: tuple[int, ...]) -> Any:
    """A seeded-random float32 input of `shape`; one too large to allocate is a ModelError (torch raises a
    RuntimeError of several lines, from C++)."""
    try:
        return torch.randn(*shape)
    except (RuntimeError, MemoryError, OverflowError) as exc:
        size = "x".join(str(d) for d in shape)
        raise ModelError(f"cannot make a {size} float32 input (--batch, --input-size): {_one_line(exc)}") from None


def _export_to(
    torch: Any, fn: Callable[[Path], None], tmp: Path, label: str | None, kind: str, errors: list[str]
) -> bool:
    """Run exporter `fn` into `tmp` and load the result back: True when it worked; False, with the reason added to
    `errors`, when the next exporter should try; ModelError when the model cannot be traced faithfully at all."""
    try:
        with torch.no_grad():
            fn(tmp)
        load_model(tmp)
    except Exception as exc:  # exporter internals raise anything; try the next exporter
        traced = _tracer_warning(torch, exc)
        if traced is not None:
            raise ModelError(
                f"export of {label} failed: the model has data-dependent control flow (or Python values computed "
                f"from tensors) that tracing cannot export; the TorchScript exporter would fix it to the example "
                f"input's case ({_one_line(traced)}); " + "; ".join(errors)
            ) from None
        log.warning("%s exporter failed on %s: %s", kind, label, _one_line(exc, 2000))
        errors.append(f"{kind}: {_one_line(exc)}")
        return False
    return True


def _tracer_warning(torch: Any, exc: BaseException) -> BaseException | None:
    """The TracerWarning (raised as an error) behind `exc`: torch's C++ often rewraps it as a SystemError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, torch.jit.TracerWarning):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _torch_outputs(value: Any) -> list[Any]:
    """The tensors of a forward's result in order (a tensor, or tuples / lists / dicts of them)."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _torch_outputs(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _torch_outputs(v)]
    return [] if value is None else [value]


def _check_against_torch(torch: Any, model: Any, x: Any, path: Path) -> None:
    """ONNX Runtime on `path` must reproduce torch on `x` within float32 tolerance; ModelError otherwise.

    Elementwise |onnx - torch| <= CHECK_RTOL * |torch| + CHECK_ATOL * max|torch| (the output's scale): the exporters
    fold and reorder float32 arithmetic, so exact equality is not expected, but a wrong graph is off by far more.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        with torch.no_grad():
            want = [t.detach().cpu().numpy() for t in _torch_outputs(model(x))]
    except Exception as exc:
        raise ModelError(f"exported model check: the torch forward failed: {_one_line(exc)}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:  # an export ONNX Runtime cannot open or run (an op it lacks, memory) is the export's failure, in one line
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types (Fail, InvalidGraph...)
        raise ModelError(f"exported model check: ONNX Runtime cannot run the export: {_one_line(exc)}") from None
    if len(got) != len(want):
        raise ModelError(f"exported model check: ONNX has {len(got)} outputs, torch returned {len(want)}")
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            raise ModelError(f"exported model check: output {k} has shape {g.shape} in ONNX, {w.shape} in torch")
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 0.0
        if not np.allclose(g, w, rtol=CHECK_RTOL, atol=CHECK_ATOL * scale, equal_nan=True):
            err = float(np.nanmax(np.abs(g.astype(np.float64) - w)))
            raise ModelError(
                f"exported ONNX disagrees with torch on a fresh random input: output {k} max |onnx - torch| = "
                f"{err:.3g} (output scale {scale:.3g}); the model may have data-dependent behaviour the exporter "
                "fixed to the example input"
            )


def _export(torch: Any, model: Any, example: Any, path: Path, dynamo: bool, opset: int, external: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"], "dynamo": dynamo}
    if dynamo:
        kwargs.update(opset_version=opset, external_data=external, verbose=False)
    else:
        kwargs.update(opset_version=min(opset, 18), do_constant_folding=True)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():  # the dynamo exporter prints progress
        if not dynamo:  # tracing fixes data-dependent branches to the example's: refuse instead of warning
            warnings.simplefilter("error", torch.jit.TracerWarning)
            torch.jit.TracerWarning.ignore_lib_warnings()  # torch's own internals, as torch.jit.trace does
        torch.onnx.export(model, (example,), str(path), **kwargs)
    if captured.getvalue().strip():
        log.debug("exporter output:\n%s", captured.getvalue().rstrip())
    if not dynamo and external:
        import onnx

        save_model(onnx.load(str(path)), path, external=True)


def _cleanup(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    Path(str(tmp) + ".data").unlink(missing_ok=True)


def _move_with_data(tmp: Path, out: Path) -> None:
    """Re-save a model with external data as `out` and `out.name + '.data'`, atomically (`save_model`: onnx's own
    writer appended to an existing data file, which grew by the model's weights at each export to the same path:
    review), then remove the temporary export and its data."""
    import onnx

    save_model(onnx.load(str(tmp)), out, external=True)
    for f in tmp.parent.glob(tmp.name + "*"):
        f.unlink(missing_ok=True)

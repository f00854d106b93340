"""What "the same result" means across machines.

Bit-identical floating point is a property of one set of kernels (CPU instruction set, the BLAS and
oneDNN code paths it selects, thread count, library versions), not of the code. So a result is
compared with its record in one of two ways, and every check says which:

- **bit-identical**: the recording machine's signature (:func:`machine_signature`) equals this
  one's. Weights, logits and metrics must match to the bit.
- **equal within tolerance, other machine**: the signatures differ. A run's weights must be within
  ``WEIGHT_RTOL`` of its record by relative norm (``‖w − w₀‖ / ‖w₀‖``), its logits on every eval
  split within ``OUTPUT_RTOL``, each loss / ECE / agreement / CKA within ``METRIC_ATOL``, each
  accuracy within one example.

The tolerances come from a measured spread: the pinned runs (``tests/pinned_runs.py``) trained
under each instruction set PyTorch, oneDNN and MKL can be restricted to on one CPU (``python
tests/pinned_runs.py --spread``, figures in ``tests/pinned/spread.json``), times ten. A deliberate
one-line change of the training path moves them far more (``tests/test_pinned.py`` shows it).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

# Tolerances on another machine: 10 x the largest spread measured across instruction sets
# (tests/pinned/spread.json: weights 3.1e-4, outputs 3.4e-5, losses / ECE 1.2e-6), rounded up;
# a real second machine differed from the recording one by at most 1.7e-6 in a loss.
#: relative-norm tolerance of a run's weights, all tensors together (‖w − w₀‖ / ‖w₀‖): attention
#: key biases are not identifiable (softmax ignores them), so Adam walks them on rounding noise
WEIGHT_RTOL = 4e-3
#: relative-norm tolerance of a run's logits on each eval split
OUTPUT_RTOL = 4e-4
#: absolute tolerance of a loss, ECE, agreement, JS or CKA value (accuracies: one example)
METRIC_ATOL = 1e-4

#: environment variables that choose kernels (part of the signature when set)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "MKL_CBWR")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: whether this process flushes subnormal floats to zero (:func:`flush_denormal`); None: never set
_FLUSH_DENORMAL: bool | None = None


def flush_denormal(on: bool) -> bool:
    """Flush subnormal floats (|x| < 1.2e-38 in float32) to zero on this CPU, or stop flushing;
    returns whether flushing is in effect (False where the CPU cannot). Values that small cannot
    move a weight, but they are slow: once a student fits its training set, Adam's moment
    estimates decay through them and an optimizer step costs several times more (``train.py``'s
    ``flush_denormal`` key). The CPU keeps this mode per thread: it holds for the calling thread
    and the threads started from it later (they inherit it), not for threads already running
    (an intra-op pool started earlier), and a thread started while it is on keeps it. Recorded in
    :func:`machine_signature`."""
    global _FLUSH_DENORMAL
    _FLUSH_DENORMAL = bool(torch.set_flush_denormal(bool(on))) and bool(on)
    return _FLUSH_DENORMAL


@contextlib.contextmanager
def subnormals_flushed(on: bool):
    """Flush subnormals (:func:`flush_denormal`) inside the block, and put back what was in effect
    before it on the way out, whether the block returns or raises."""
    global _FLUSH_DENORMAL
    before = _FLUSH_DENORMAL
    try:
        yield flush_denormal(on)
    finally:
        flush_denormal(bool(before))
        _FLUSH_DENORMAL = before


def machine_signature(threads: int | None = None) -> dict[str, str]:
    """What decides the floating-point bits of a CPU run besides the code: the CPU, the kernel
    set PyTorch dispatches to, library versions, the thread count and whether subnormal floats
    are flushed to zero (once :func:`flush_denormal` has set it)."""
    sig = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": str(threads if threads is not None else torch.get_num_threads()),
    }
    if _FLUSH_DENORMAL is not None:
        sig["flush_denormal"] = str(_FLUSH_DENORMAL)
    sig.update({k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)})
    return sig


def same_machine(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> bool:
    return a is not None and b is not None and dict(a) == dict(b)


def relative_difference(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (``‖a − b‖`` where ``b`` is zero); inf on a shape mismatch."""
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    diff = float(np.linalg.norm((a - b).ravel()))
    norm = float(np.linalg.norm(b.ravel()))
    return diff / norm if norm > 0 else diff


@dataclass
class Comparison:
    """The outcome of comparing a result with its record: how (``bit-identical`` or ``within
    tolerance, other machine``), whether it held, and the worst deviations found."""

    how: str
    ok: bool = True
    worst: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.ok = False
        self.failures.append(what)

    def line(self) -> str:
        worst = ", ".join(f"{k} {v:.2g}" for k, v in sorted(self.worst.items(), key=lambda kv: -kv[1])[:2])
        if self.ok:
            return f"{self.how}" + (f" (largest deviations: {worst})" if worst and self.how != BIT_IDENTICAL else "")
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"differs ({self.how} check): {self.failures[0]}{more}"


BIT_IDENTICAL = "bit-identical"
WITHIN_TOLERANCE = "equal within tolerance, other machine"


def compare_weights(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                    same: bool, rtol: float = WEIGHT_RTOL, into: Comparison | None = None,
                    name: str = "weights") -> Comparison:
    """Compare two state dicts: to the bit on the same machine, else by the relative norm of all
    tensors together."""
    out = into or Comparison(BIT_IDENTICAL if same else WITHIN_TOLERANCE)
    if set(actual) != set(expected):
        out.fail(f"{name}: tensors {sorted(set(actual) ^ set(expected))} are in one state dict only")
        return out
    keys = sorted(expected)
    a = [actual[k].detach().cpu() for k in keys]
    e = [expected[k].detach().cpu() for k in keys]
    if same:
        for key, x, y in zip(keys, a, e):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                out.fail(f"{name}: {key} is not bit-identical")
        return out
    if any(x.shape != y.shape for x, y in zip(a, e)):
        out.fail(f"{name}: tensor shapes differ")
        return out
    rel = relative_difference(torch.cat([x.double().ravel() for x in a]), torch.cat([y.double().ravel() for y in e]))
    out.worst[name] = rel
    if not rel <= rtol:
        out.fail(f"{name}: relative difference {rel:.3g} > {rtol:g}")
    return out


def compare_arrays(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], same: bool,
                   rtol: float = OUTPUT_RTOL, into: Comparison | None = None) -> Comparison:
    """Compare named arrays (e.g. logits per eval split): to the bit on the same machine, else each
    by relative norm."""
    out = into or Comparison(BIT_IDENTICAL if same else WITHIN_TOLERANCE)
    for key in sorted(expected):
        if key not in actual:
            out.fail(f"{key} is missing")
            continue
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        if same:
            if a.dtype != e.dtype or not np.array_equal(a, e):
                out.fail(f"{key} is not bit-identical")
            continue
        rel = relative_difference(a, e)
        out.worst[key] = rel
        if not rel <= rtol:
            out.fail(f"{key}: relative difference {rel:.3g} > {rtol:g}")
    return out


def compare_values(actual: Mapping[str, float], expected: Mapping[str, float], same: bool,
                   atol: float = METRIC_ATOL, steps: Mapping[str, float] | None = None,
                   into: Comparison | None = None) -> Comparison:
    """Compare flat ``name -> value`` maps: exactly on the same machine, else within ``atol`` — or,
    for names in ``steps`` (e.g. an accuracy over n examples: 1/n), within one step."""
    out = into or Comparison(BIT_IDENTICAL if same else WITHIN_TOLERANCE)
    for key in sorted(expected):
        if key not in actual:
            out.fail(f"{key} is missing")
            continue
        a, e = float(actual[key]), float(expected[key])
        if same:
            if not (a == e or (math.isnan(a) and math.isnan(e))):
                out.fail(f"{key}: {a!r} != {e!r}")
            continue
        if math.isnan(a) or math.isnan(e):
            if not (math.isnan(a) and math.isnan(e)):
                out.fail(f"{key}: {a!r} vs {e!r}")
            continue
        tol = max(atol, (steps or {}).get(key, 0.0) * (1 + 1e-9))
        out.worst[key] = abs(a - e)
        if not abs(a - e) <= tol:
            out.fail(f"{key}: {a:.6g} vs {e:.6g} (|difference| {abs(a - e):.3g} > {tol:.3g})")
    return out


def _flat_metrics(metrics: Mapping) -> tuple[dict[str, float], dict[str, float]]:
    """``split/metric -> value`` of a metrics.json's numeric per-split values, and the accuracy
    steps (1/n) where a split records its size."""
    values, steps = {}, {}
    for split, m in (metrics.get("splits") or {}).items():
        for key, value in m.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                values[f"{split}/{key}"] = float(value)
        if m.get("n"):
            steps[f"{split}/accuracy"] = 1.0 / float(m["n"])
    return values, steps


def compare_runs(new, old) -> Comparison:
    """Compare a retrained run with the run it reproduces (both :class:`biaskd.record.artifacts.RunDir`):
    final weights, logits on every eval split and per-split metrics — to the bit where both were
    made on machines with one signature, else within the tolerances above. A run recorded before
    signatures were kept counts as made on another machine."""
    same = same_machine(new.meta.get("machine"), old.meta.get("machine"))
    out = Comparison(BIT_IDENTICAL if same else WITHIN_TOLERANCE)
    compare_weights(new.state_dict(), old.state_dict(), same, into=out)
    from biaskd.record.schema import outputs_file

    splits = [s for s in sorted(old.metrics.get("splits") or {}) if (old.path / outputs_file(s)).exists()]
    compare_arrays({f"outputs/{s}": new.outputs(s)["logits"] for s in splits if (new.path / outputs_file(s)).exists()},
                   {f"outputs/{s}": old.outputs(s)["logits"] for s in splits}, same, into=out)
    values, steps = _flat_metrics(old.metrics)
    compare_values(_flat_metrics(new.metrics)[0], values, same, steps=steps, into=out)
    return out

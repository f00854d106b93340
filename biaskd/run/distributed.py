"""Runs trained by several processes (``trainer=ddp``): who starts them, who decides, who writes.

Lightning's ``ddp`` strategy starts its other processes by running the same command again with
``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set (a cluster
starts them itself: SLURM, ``torchrun``). So every rank runs the whole job, teacher training
before the student's included. Here they are made one job:

* :func:`launch` starts the ranks and their process group at the top of every run, before
  anything is decided (Lightning would start them at the first ``trainer.fit``, by which time
  rank 0 holds the run's lock and the new ranks, running the command from the top, would wait
  for it);
* global rank 0 alone takes run locks (:func:`run_lock`), looks at the disk (complete? resume
  from which checkpoint?), writes files, evaluates and records the run (:func:`on_main`); the
  other ranks follow its answers and wait for it, and are quiet (warnings only);
* every rank trains its own part of each batch (:func:`shard`, read by
  :class:`biaskd.data.base.TensorBatches`).

In a 1-process run every function here is the plain call it wraps. The messages
between ranks go through a separate gloo group whose timeout is :data:`WAIT`, so a rank can wait
that long for rank 0 (which may wait for another job's lock on the same run, or evaluate alone).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from biaskd.errors import ConfigError, TrainingError

log = logging.getLogger("biaskd")
T = TypeVar("T")

#: how long a rank waits for rank 0's answer (lock waits and rank 0's work alone included)
WAIT = datetime.timedelta(days=7)

_state: dict[str, Any] = {"layout": None, "group": None, "held": 0}


def _dist():
    """``torch.distributed`` if torch is loaded and a process group is up, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def is_main() -> bool:
    return rank() == 0


def layout(trainer: Mapping) -> tuple:
    """What decides a run's processes: accelerator, devices, nodes and strategy."""
    return (str(trainer.get("accelerator", "auto")), str(trainer.get("devices", "auto")),
            int(trainer.get("num_nodes", 1) or 1), str(trainer.get("strategy", "auto")))


def launch(trainer: Mapping) -> None:
    """Start the processes the ``trainer`` config asks for (and their process group), once per
    process: a no-op for one process, or when they are running already. Every run a process
    trains afterwards (its teacher, the next job of a sweep) must ask for the same processes."""
    wanted = layout(trainer)
    if _state["layout"] is not None:
        if wanted != _state["layout"]:
            raise ConfigError(f"config key 'trainer': this process trains as one of the processes of "
                              f"{_describe(_state['layout'])}; a run it trains next (a teacher, another job) cannot "
                              f"ask for {_describe(wanted)} (give the teacher the student's trainer settings)")
        return
    if wanted[1] == "1" and wanted[2] == 1:
        return  # one process: nothing to start (the default CPU run)
    from lightning.fabric import Fabric

    from biaskd.quiet import quiet_libraries

    quiet_libraries()  # Lightning's info lines (devices, process group) stay out of the output
    strategy = wanted[3]
    fabric = Fabric(accelerator=trainer.get("accelerator", "auto"), devices=trainer.get("devices", "auto"),
                    num_nodes=wanted[2], strategy=strategy)
    if fabric.world_size == 1:
        return
    if _state["held"]:
        raise ConfigError(f"config key 'trainer': a run inside a 1-process run (its teacher) cannot start "
                          f"{_describe(wanted)}; train the student with the same trainer settings")
    refused = ConfigError(f"config key 'trainer.strategy': {strategy!r} trains in processes started for the fit "
                          "alone; use strategy=ddp, whose processes run the whole job")
    if any(word in strategy for word in ("spawn", "fork", "notebook")):
        raise refused
    try:
        fabric.launch()  # the other processes start here and run the same command; the group is up after it
    except TypeError as exc:  # what Fabric says of a strategy that forks or spawns (e.g. auto, interactively)
        if "with a function" in str(exc):
            raise refused from None
        raise
    import torch.distributed as dist

    _state["group"] = dist.new_group(backend="gloo", timeout=WAIT)  # answers between ranks, on the CPU
    _state["layout"] = wanted
    if not is_main():
        log.setLevel(logging.WARNING)  # one voice per job: rank 0's


def _describe(lay: tuple) -> str:
    accelerator, devices, nodes, strategy = lay
    return f"accelerator={accelerator} devices={devices} num_nodes={nodes} strategy={strategy}"


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_state["group"])
    return box[0]


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a TrainingError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return TrainingError(f"on process 0: {type(exc).__name__}: {exc}")


def _main_then_tell(fn: Callable[..., T], send_value: bool, args, kwargs) -> tuple[bool, T | None]:
    """Rank 0 runs ``fn`` and tells the others how it went (and with ``send_value`` its
    result); the others raise the error it raised. Returns (whether this rank ran fn, result)."""
    if is_main():
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            _broadcast(("error", _sendable(exc)))
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: the others stop too
            _broadcast(("error", TrainingError("process 0 was stopped")))
            raise
        _broadcast(("ok", value if send_value else None))
        return True, value
    kind, value = _broadcast(None)
    if kind == "error":
        raise value
    return False, value


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on global rank 0 alone; every rank returns its result (picklable)
    or raises the error it raised."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    return _main_then_tell(fn, True, args, kwargs)[1]


def main_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn`` on rank 0, then on the other ranks: what rank 0 writes (a teacher cache), they read."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    ran, value = _main_then_tell(fn, False, args, kwargs)
    return value if ran else fn(*args, **kwargs)


@contextlib.contextmanager
def run_lock(run):
    """The run's lock (:func:`biaskd.run.trust.run_lock`), taken by global rank 0 alone: one job, one
    holder. The other ranks wait for rank 0 at its next answer (:func:`on_main`)."""
    from biaskd.run.trust import run_lock as file_lock

    _state["held"] += 1
    try:
        with (file_lock(run) if is_main() else contextlib.nullcontext()):
            yield
    finally:
        _state["held"] -= 1


def shard() -> tuple[int, int] | None:
    """(rank, world size) when each process trains a part of every batch, else None."""
    n = world_size()
    return (rank(), n) if n > 1 else None


def record(batch_size: int) -> dict:
    """What ``meta.json`` says of a run's processes (empty for one process)."""
    n = world_size()
    if n == 1:
        return {}
    return {"processes": {"world_size": n, "batch_size_per_process": int(batch_size),
                          "global_batch_size": int(batch_size) * n, "strategy": _state["layout"][3],
                          "backend": _backend()}}


def _backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend())


def cpu_threads() -> int | None:
    """Torch threads per process for ``threads=0`` in a multi-process job: the count Lightning's
    launcher set (``OMP_NUM_THREADS``: the cores shared by the processes of a node); None otherwise."""
    if world_size() > 1 and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return None

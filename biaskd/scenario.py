"""A scenario, declared once: which runs are compared with each other, how the task's bias is
measured, and the metric a map leads with.

A task declares it in its config (``task.bias``: ``scenario``, ``measure``, ``headline``); a recipe
may rename the scenario (the top-level ``scenario`` key, e.g. ``vision_60k`` for the same task at
another data scale); every run records the result in ``meta.json["scenario"]``, and the analysis
reads it from there. A task that declares nothing is its own scenario, measured by the generic
measures (accuracy per split, agreement, JS, CKA).

``measure`` names a bias measure of :mod:`analysis.bias` (``shift``: accuracy and prediction
consistency under shifts, per OOD family; ``attractors``: accuracy per attractor count;
``generic``) or a user's own, as ``package.module:function``.

Tables that outlive the config carry their scenarios' declarations beside them
(:func:`write_table` / :func:`read_table`: ``scenarios.csv`` beside the transfer map).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GENERIC = "generic"


@dataclass(frozen=True)
class Scenario:
    name: str
    measure: str = GENERIC
    headline: str = "test"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def declared(cfg: Any, setup: str | None = None) -> Scenario:
    """The scenario a run's config declares (``setup="lm"``: the LM setup of a task is a scenario
    of its own, ``<name>_lm``, unless the recipe names it)."""
    task = cfg.get("task") or {}
    bias = task.get("bias") or {}
    name = cfg.get("scenario") or bias.get("scenario") or task.get("name") or "task"
    if setup == "lm" and not cfg.get("scenario"):
        name = f"{name}_lm"
    return Scenario(str(name), str(bias.get("measure") or GENERIC), str(bias.get("headline") or "test"))


#: runs recorded before tasks declared their scenario: the declarations their tasks have now
_RECORDED_BEFORE = {
    "mnist": Scenario("vision", "shift", "translated"),
    "sva": Scenario("language", "attractors", "a_accuracy"),
    "sva_linzen": Scenario("linzen", "attractors", "a_accuracy"),
}


def of_record(meta: Mapping[str, Any]) -> Scenario:
    """A run's scenario from its ``meta.json``. Records made before scenarios were recorded get
    the declaration their task has now (a recipe's name, recorded as a string, is kept)."""
    recorded = meta.get("scenario")
    if isinstance(recorded, Mapping) and recorded.get("name"):
        return Scenario(str(recorded["name"]), str(recorded.get("measure") or GENERIC),
                        str(recorded.get("headline") or "test"))
    task = str(meta.get("task") or "task")
    lm = meta.get("setup") == "lm"
    base = task[: -len("_lm")] if lm and task.endswith("_lm") else task
    known = next((s for t, s in sorted(_RECORDED_BEFORE.items(), key=lambda kv: -len(kv[0]))
                  if base == t or base.startswith(f"{t}_")), None)
    if isinstance(recorded, str) and recorded:
        return Scenario(recorded, *(known.measure, known.headline) if known else (GENERIC, "test"))
    if known is None:
        return Scenario(task)
    return Scenario(f"{known.name}_lm" if lm else known.name, known.measure, known.headline)


#: the columns of a table of declarations (one scenario a row)
TABLE_COLUMNS = ("name", "measure", "headline")


def write_table(path: str | Path, scenarios: Iterable[Scenario]) -> Path:
    """The declarations as a CSV of :data:`TABLE_COLUMNS`, sorted by name."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows((s.name, s.measure, s.headline) for s in sorted(scenarios, key=lambda s: s.name))
    return path


def read_table(path: str | Path) -> dict[str, Scenario]:
    """The declarations of a table :func:`write_table` wrote, by name (an empty measure is
    ``generic``, an empty headline ``test``)."""
    from biaskd.errors import DataFormatError

    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(has {', '.join(reader.fieldnames or []) or 'none'})")
        rows = [r for r in reader if (r.get("name") or "").strip()]
    return {r["name"]: Scenario(r["name"], r["measure"] or GENERIC, r["headline"] or "test") for r in rows}

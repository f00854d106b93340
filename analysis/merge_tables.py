"""Combine transfer-map tables made on different machines and re-derive the map from them.

    python -m analysis.merge_tables IN_DIR[:OLD=NEW[,OLD=NEW...]] [IN_DIR...] --out OUT_DIR

e.g. ``python -m analysis.merge_tables results runs_new/map results/v3:language=language_v3 --out merged``.

Each ``IN_DIR`` is a folder written by ``python -m analysis.transfer_map`` (or by this command):
its ``transfer_map_per_seed.csv`` is required; ``teacher_signal.csv``, ``teacher_bias.csv`` and
``scenarios.csv`` are read when present. ``:OLD=NEW`` after a folder renames scenario ``OLD`` to
``NEW`` in every table of that folder (several renames separated by commas); a rename of a
scenario the folder does not have is an error. Per-seed tables written before objectives were an
axis have no ``objective`` column: their rows are ``kd`` (as :mod:`analysis.protocol` reads them).

Later folders win, a trained model at a time: when a later folder has any per-seed row of a model
(its cell — scenario, teacher, student, student epochs, temperature, transfer-set size,
objective —, seed and role), that folder's rows of the model replace all of an earlier folder's,
so a model's metrics always come from one folder. A metric the earlier folder had and the later
one lacks is dropped, not kept beside the new values: the same seed trained again (on another
machine, or by other code) is another model, and its accuracy must not sit beside the old one's
CKA. Standard error counts the replaced and the dropped rows. A ``teacher_signal.csv`` row with the same scenario, teacher, distill,
student epochs, temperature, transfer-set size and inputs, and a ``teacher_bias.csv`` row with the
same scenario, model, measure and x, replaces the earlier row with that key.

From the merged per-seed rows, into ``OUT_DIR``, as ``analysis.transfer_map`` writes them
(:func:`analysis.transfer_map.write_map`): ``transfer_map.csv`` (one row per cell x metric,
:func:`analysis.transfer_map.compare_cell`), ``transfer_map_per_seed.csv``, ``claims_<name>.csv``
and ``verdicts_<name>.csv`` for each protocol of ``conf/protocol/`` whose scenarios appear, the
teacher tables, ``scenarios.csv``, ``transfer_map.md`` and the figures. Every input is read and
checked, and every table computed, before anything is written; the files are written into a
temporary folder and then moved into ``OUT_DIR`` (which may be one of the inputs).

Each scenario is measured and headed as a folder's ``scenarios.csv`` declares it (a later folder's
declaration wins); a scenario no ``scenarios.csv`` declares (folders written before it existed) as
the config declares its name in that folder before renaming, so ``results/v3:language=language_v3``
keeps the grammar's measure and headline (A-accuracy) under its new name.

Protocols name their scenarios: renaming a protocol's scenario takes the renamed rows out of its
judgement (the rows still under the old name, from other folders, are judged; said on stderr);
``--protocols v2,v3`` judges only those (``--protocols ''`` none).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.bias import bias_measure
from analysis.transfer_map import (BIAS_KEYS, CELL_FIELDS, MAP_COLUMNS, SIGNAL_KEYS, _cell_dict, _t_key,
                                   compare_cell, write_map)
from biaskd.errors import ArtifactError, DataFormatError, MissingDataError
from biaskd.scenario import Scenario, read_table

PER_SEED = "transfer_map_per_seed.csv"
ROLES = ("kd", "indep", "self", "teacher")
#: what makes a per-seed row: its cell, seed, role and metric
PER_SEED_KEYS = [*CELL_FIELDS, "seed", "role", "metric"]
#: one trained model: a later input that has any of its rows replaces all of them
MODEL_KEYS = [*CELL_FIELDS, "seed", "role"]
PER_SEED_COLUMNS = [*PER_SEED_KEYS, "value", "run"]
#: the per-seed columns every input must have (``objective`` is kd and ``run`` empty where missing)
REQUIRED = [c for c in PER_SEED_COLUMNS if c not in ("objective", "run")]
BIAS_COLUMNS = [*BIAS_KEYS, "mean", "half_width", "n"]
_RENAME = re.compile(r"^[^=,:]+=[^=,:]+$")


def _say(message: str) -> None:
    print(f"merge tables: {message}", file=sys.stderr)


@dataclass
class Input:
    """One folder's tables, its renames applied."""
    folder: Path
    renames: dict[str, str]
    per_seed: pd.DataFrame
    signal: pd.DataFrame
    bias: pd.DataFrame
    declared: dict[str, Scenario]  # by its scenarios.csv (renamed)
    original: dict[str, str] = field(default_factory=dict)  # name in the tables -> name before renaming

    @property
    def label(self) -> str:
        return f"{self.folder}" + (":" + ",".join(f"{a}={b}" for a, b in self.renames.items()) if self.renames else "")


def parse_input(arg: str) -> tuple[Path, dict[str, str]]:
    """``IN_DIR`` or ``IN_DIR:OLD=NEW[,OLD=NEW...]`` -> (folder, {old: new})."""
    path, sep, spec = arg.rpartition(":")
    items = [item.strip() for item in spec.split(",")] if sep else []
    if not (items and all(_RENAME.match(item) for item in items)):
        return Path(arg), {}
    renames: dict[str, str] = {}
    for item in items:
        old, new = (s.strip() for s in item.split("=", 1))
        if old in renames:
            raise DataFormatError(f"{arg}: scenario {old!r} renamed twice")
        renames[old] = new
    return Path(path), renames


# -- reading --------------------------------------------------------------------------------------------
def _read_csv(path: Path, required: Sequence[str], optional: bool) -> pd.DataFrame | None:
    if not path.is_file():
        if optional:
            return None
        raise MissingDataError(f"{path}: missing (python -m analysis.transfer_map writes it beside transfer_map.csv)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a table with no rows and no header (e.g. no teacher signal recorded)
        if optional:
            return None
        raise DataFormatError(f"{path}: empty, expected columns {', '.join(required)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path}: missing column(s) {', '.join(missing)} "
                              f"(has {', '.join(map(str, frame.columns)) or 'none'})")
    return frame


def _whole(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        raise DataFormatError(f"{path}: column {column} needs whole numbers; row(s) "
                              f"{', '.join(str(i + 2) for i in frame.index[bad][:5])} have "
                              f"{', '.join(map(repr, frame[column][bad][:5].tolist()))}")
    return values.astype("int64")


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        raise DataFormatError(f"{path}: column {column} needs numbers; e.g. {frame[column][bad].iloc[0]!r} "
                              f"in row {frame.index[bad][0] + 2}")
    return values.astype(float)


def _names(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
    if empty.any():
        raise DataFormatError(f"{path}: column {column} is empty in row(s) "
                              f"{', '.join(str(i + 2) for i in frame.index[empty][:5])}")
    return frame[column].astype(str)


def _no_duplicates(frame: pd.DataFrame, keys: Sequence[str], path: Path, renames: dict[str, str]) -> None:
    dup = frame.duplicated(list(keys), keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise DataFormatError(f"{path}: {int(dup.sum())} rows share their key ({', '.join(keys)})"
                              + (f" after renaming {renames}" if renames else "")
                              + f", e.g. {', '.join(f'{k}={first[k]}' for k in keys)}")


def _per_seed(path: Path) -> pd.DataFrame:
    frame = _read_csv(path, REQUIRED, optional=False).reset_index(drop=True)
    if "objective" not in frame:  # tables made before objectives were an axis
        frame["objective"] = "kd"
    frame["objective"] = frame["objective"].astype(object).where(frame["objective"].notna(), "kd")
    if "run" not in frame:
        frame["run"] = None
    for column in ("scenario", "teacher", "student", "objective", "role", "metric"):
        frame[column] = _names(frame, column, path)
    for column in ("student_epochs", "transfer_n", "seed"):
        frame[column] = _whole(frame, column, path)
    frame["temperature"] = _numbers(frame, "temperature", path)  # NaN: an objective that reads no T
    frame["value"] = _numbers(frame, "value", path)
    roles = sorted(set(frame["role"]) - set(ROLES))
    if roles:
        raise DataFormatError(f"{path}: unknown role(s) {', '.join(roles)} (roles are {', '.join(ROLES)})")
    return frame[PER_SEED_COLUMNS]


def _keyed(path: Path, keys: Sequence[str]) -> pd.DataFrame | None:
    frame = _read_csv(path, keys, optional=True)
    if frame is None:
        return None
    frame = frame.reset_index(drop=True)
    frame["scenario"] = _names(frame, "scenario", path)
    if "temperature" in keys:
        frame["temperature"] = _numbers(frame, "temperature", path)
    return frame


def read_input(folder: str | Path, renames: dict[str, str] | None = None) -> Input:
    """One folder's tables with ``renames`` ({old: new} scenario names) applied, checked."""
    folder, renames = Path(folder), dict(renames or {})
    per_seed = _per_seed(folder / PER_SEED)
    signal = _keyed(folder / "teacher_signal.csv", SIGNAL_KEYS)
    bias = _keyed(folder / "teacher_bias.csv", BIAS_KEYS)
    declared = read_table(folder / "scenarios.csv") if (folder / "scenarios.csv").is_file() else {}
    names = set(per_seed["scenario"]) | set(declared)
    for frame in (signal, bias):
        if frame is not None:
            names |= set(frame["scenario"])
    unknown = sorted(set(renames) - names)
    if unknown:
        raise DataFormatError(f"{folder}: no scenario {', '.join(map(repr, unknown))} to rename "
                              f"(its scenarios: {', '.join(sorted(names)) or 'none'})")
    rename = lambda name: renames.get(name, name)  # noqa: E731
    per_seed["scenario"] = per_seed["scenario"].map(rename)
    _no_duplicates(per_seed, PER_SEED_KEYS, folder / PER_SEED, renames)
    for frame, name, keys in ((signal, "teacher_signal.csv", SIGNAL_KEYS), (bias, "teacher_bias.csv", BIAS_KEYS)):
        if frame is not None:
            frame["scenario"] = frame["scenario"].map(rename)
            _no_duplicates(frame, keys, folder / name, renames)
    declared = {rename(n): Scenario(rename(n), s.measure, s.headline) for n, s in declared.items()}
    original = {n: n for n in names}
    original.update({new: old for old, new in renames.items()})  # a renamed scenario keeps its declaration
    return Input(folder, renames, per_seed, signal if signal is not None else pd.DataFrame(),
                 bias if bias is not None else pd.DataFrame(), declared, original)


# -- merging --------------------------------------------------------------------------------------------
def _later_wins(frames: Sequence[pd.DataFrame], labels: Sequence[str], keys: Sequence[str],
                what: str, unit: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of ``frames`` in order, all rows of a ``unit`` (default: the whole key; NaN equal
    to NaN) taken from the last frame that has any row of it; says how many rows were replaced,
    and how many of those had no row with their key in the frame that replaced them (dropped)."""
    present = [(f, label) for f, label in zip(frames, labels) if not f.empty]
    if not present:
        return pd.DataFrame()
    columns = list(dict.fromkeys(c for f, _ in present for c in f.columns))
    merged = pd.concat([f.assign(_input=i) for i, (f, _) in enumerate(present)], ignore_index=True)
    unit = list(unit or keys)
    last = merged.groupby(unit, dropna=False, sort=False)["_input"].transform("max")
    replaced = merged["_input"] < last
    kept = merged[~replaced]
    by = merged[replaced].groupby("_input").size()
    message = (f"{what}: {int(replaced.sum())} row(s) of earlier inputs replaced by later inputs' rows "
               + ("with the same key" if unit == list(keys) else "of the same trained model (cell, seed, role)")
               + (" (" + ", ".join(f"{n} of {present[i][1]}" for i, n in by.items()) + ")" if len(by) else ""))
    if unit != list(keys) and replaced.any():
        marker = kept[list(keys)].assign(_kept=True)
        old = merged[replaced][list(keys)].merge(marker, on=list(keys), how="left")
        dropped = old["_kept"].isna()
        if dropped.any():
            first = old[dropped].iloc[0]
            message += (f"; {int(dropped.sum())} of them dropped, as their later input has no such row "
                        f"(a seed's metrics come from one input), e.g. "
                        + ", ".join(f"{k}={first[k]}" for k in keys))
    _say(message)
    return kept[columns].reset_index(drop=True)


def merge_scenarios(inputs: Sequence[Input], names: Sequence[str]) -> dict[str, Scenario]:
    """The declaration of each scenario: the last ``scenarios.csv`` that declares it, else the
    config's declaration of its name before renaming in the last folder that has it."""
    from analysis.transfer_figures import declared_scenarios

    explicit: dict[str, Scenario] = {}
    for inp in inputs:
        for name, s in inp.declared.items():
            if name in explicit and explicit[name] != s:
                _say(f"scenario {name}: {inp.folder}/scenarios.csv declares measure {s.measure}, headline "
                     f"{s.headline} (an earlier input: {explicit[name].measure}, {explicit[name].headline}); "
                     "the later one is used")
            explicit[name] = s
    out = dict(explicit)
    for name in names:
        if name in out:
            continue
        original = next((inp.original[name] for inp in reversed(inputs) if name in inp.original), name)
        base = declared_scenarios([original])[original]
        out[name] = Scenario(name, base.measure, base.headline)
    return out


def _metric_order(scenario: Scenario | None) -> list[str]:
    if scenario is None:
        return []
    try:
        return list(bias_measure(scenario.measure).metrics)
    except ArtifactError:  # a user's measure not importable here: the order the rows have
        return []


def _cell_key(cell: tuple) -> tuple:
    return tuple(map(str, cell))  # the order of analysis.transfer_map.transfer_map


def map_from_per_seed(per_seed: pd.DataFrame, scenarios: dict[str, Scenario]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the map, the per-seed rows in the map's order) from per-seed rows, as
    :func:`analysis.transfer_map.transfer_map` makes them from runs: cells in its order, a cell's
    metrics in its measure's order and then in the order the rows first give them."""
    rank = {r: i for i, r in enumerate(ROLES)}
    cells = []
    for key, group in per_seed.groupby(list(CELL_FIELDS), dropna=False, sort=False):
        scenario, teacher, student, epochs, t, n, objective = key
        cell = (str(scenario), str(teacher), str(student), int(epochs), _t_key(float(t)), int(n), str(objective))
        group = group.assign(_rank=group["role"].map(rank)).sort_values(["seed", "_rank"], kind="stable")
        cells.append((cell, group.drop(columns="_rank")))
    rows, ordered = [], []
    for cell, group in sorted(cells, key=lambda c: _cell_key(c[0])):
        values: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for seed, role, metric, value in zip(group["seed"], group["role"], group["metric"], group["value"]):
            values[metric][role][int(seed)] = float(value)
        described = _metric_order(scenarios.get(cell[0]))
        for metric in [*described, *(m for m in values if m not in described)]:
            if metric in values:
                rows.append({**_cell_dict(cell), "metric": metric, **compare_cell(values[metric])})
        ordered.append(group)
    per_seed = pd.concat(ordered, ignore_index=True) if ordered else pd.DataFrame(columns=PER_SEED_COLUMNS)
    return pd.DataFrame(rows, columns=MAP_COLUMNS), per_seed[PER_SEED_COLUMNS]


def _sorted(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return frame.sort_values(list(keys), kind="stable", na_position="last").reset_index(drop=True) \
        if not frame.empty else frame


def _protocol_notes(inputs: Sequence[Input]) -> None:
    from analysis import protocol

    named = defaultdict(set)
    for name in protocol.available():
        for c in protocol.load(name):
            named[c.scenario].add(name)
    for inp in inputs:
        for old, new in inp.renames.items():
            if named.get(old):
                _say(f"{inp.folder}: scenario {old} renamed {new}: protocol(s) {', '.join(sorted(named[old]))} "
                     f"name {old}, so its rows from {inp.folder} are not judged by them")


def merge(args: Sequence[str | tuple[str | Path, dict[str, str]]], out: str | Path,
          protocols: Sequence[str] | None = None) -> dict[str, Path]:
    """Merge the folders ``args`` (``IN_DIR[:OLD=NEW,...]`` strings or (folder, renames)), later ones
    winning, and write the map re-derived from them into ``out``; ``protocols``: judge only these
    (default: every declared one whose scenarios appear)."""
    if not args:
        raise DataFormatError("no input folders to merge")
    if protocols is not None:
        from analysis import protocol

        unknown = [p for p in protocols if p not in protocol.available()]
        if unknown:
            raise DataFormatError(f"--protocols: unknown protocol(s) {', '.join(unknown)} "
                                  f"(conf/protocol/ has {', '.join(protocol.available())})")
    inputs = []
    for arg in args:  # every input read and checked before anything is computed or written
        folder, renames = parse_input(arg) if isinstance(arg, str) else (Path(arg[0]), dict(arg[1]))
        inp = read_input(folder, renames)
        _say(f"{inp.label}: {len(inp.per_seed)} per-seed rows in scenario(s) "
             f"{', '.join(sorted(set(inp.per_seed['scenario']))) or '(none)'}")
        inputs.append(inp)
    labels = [inp.label for inp in inputs]
    per_seed = _later_wins([inp.per_seed for inp in inputs], labels, PER_SEED_KEYS, PER_SEED, unit=MODEL_KEYS)
    if per_seed.empty:
        per_seed = pd.DataFrame(columns=PER_SEED_COLUMNS)
    signal = _sorted(_later_wins([inp.signal for inp in inputs], labels, SIGNAL_KEYS, "teacher_signal.csv"),
                     SIGNAL_KEYS)
    bias = _sorted(_later_wins([inp.bias for inp in inputs], labels, BIAS_KEYS, "teacher_bias.csv"), BIAS_KEYS)
    if bias.empty:  # as analysis.transfer_map writes it without teachers: the header alone
        bias = pd.DataFrame(columns=BIAS_COLUMNS)
    names = sorted(set(per_seed["scenario"]) | (set(signal["scenario"]) if not signal.empty else set())
                   | (set(bias["scenario"]) if not bias.empty else set()))
    scenarios = merge_scenarios(inputs, names)
    map_frame, per_seed = map_from_per_seed(per_seed, scenarios)
    _protocol_notes(inputs)
    cells = map_frame[list(CELL_FIELDS)].drop_duplicates()
    _say(f"{len(per_seed)} per-seed rows, {len(cells)} cells, {len(map_frame)} map rows")
    source = ("`python -m analysis.merge_tables` from the per-seed tables of "
              + ", ".join(f"`{label}`" for label in labels) + " (a later one's rows of a model replacing all of an earlier one's)")
    return write_map(out, map_frame, per_seed, signal, bias, scenarios, source, protocols)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.merge_tables", description=__doc__.splitlines()[0],
                                     epilog="Later inputs replace earlier inputs' rows, a trained model (cell, seed, role) at a time.")
    parser.add_argument("inputs", nargs="+", metavar="IN_DIR[:OLD=NEW,...]",
                        help="a folder with transfer_map_per_seed.csv (teacher_signal.csv, teacher_bias.csv, "
                             "scenarios.csv optional); ':OLD=NEW' renames scenario OLD to NEW in its tables")
    parser.add_argument("--out", required=True, help="folder for the merged tables, verdicts and figures")
    parser.add_argument("--protocols", help="comma-separated protocols to judge ('' for none; default: every "
                                            "declared one whose scenarios appear), e.g. where a rename leaves "
                                            "a protocol's scenario name to other runs")
    args = parser.parse_args(argv)
    protocols = None if args.protocols is None else [p for p in args.protocols.split(",") if p]
    for name, path in merge(args.inputs, args.out, protocols).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    from analysis.command import run

    sys.exit(run(main))

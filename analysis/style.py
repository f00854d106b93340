"""One label and one colour per configuration, in every figure, table and notebook cell.

A configuration is what runs differing only in seed share: model, role, distillation mode,
objective, teacher model, transfer inputs, and α / T where those vary. Its label reads as
a sentence a paper would print::

    cnn teacher                      mlp independent
    mlp self-distilled               mlp distilled from cnn
    mlp distilled from cnn (hints)   mlp online-distilled with cnn
    mlp distilled from cnn T=1       (T or α only when they vary between otherwise equal runs)

Its colour comes from its kind -- teacher (greys), independent (blue), self-distilled (green),
distilled with soft targets (orange), online (purple), each other objective its own hue -- so a
figure reads the same way whatever else it shows; several configurations of one kind (two
student models, two temperatures) get shades of that hue. Colours are from seaborn's
colour-blind palette.

:class:`Style` holds the labels' context (which of α, T vary) and the palette of a whole set of
runs; the report builds one and passes it to every figure, so a configuration keeps its colour
and label from the first figure to the last.

Beside the configurations: split, metric and scenario ids as a reader names them
(:func:`split_label`: ``translated_s1`` -> ``translated, severity 1``; :func:`metric_label`:
``top1_agreement`` -> ``top-1 agreement``), ``(n=5)`` for the runs behind a legend entry
(:func:`with_n`), one colour per architecture where figures compare architectures
(:func:`model_colour`), one colour limit for heatmaps drawn side by side
(:func:`symmetric_limit`), cell text that reads on its cell (:func:`text_colour`), and saving with
every label inside the image (:func:`save`).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from biaskd.errors import ConfigError
from biaskd.modes import MODES, run_label

# seaborn "colorblind" palette entries
_BLUE, _ORANGE, _GREEN, _RED, _PURPLE, _BROWN, _PINK, _GREY, _YELLOW, _CYAN = (
    "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")

#: kind -> (base colour, legend rank)
KINDS: dict[str, tuple[str, int]] = {
    "teacher": ("#3a3a3a", 0),
    "independent": (_BLUE, 1),
    "self-distilled": (_GREEN, 2),
    "distilled": (_ORANGE, 3),
    "logits_mse": (_BROWN, 4),
    "hints": (_RED, 5),
    "relation": (_PINK, 6),
    "seqkd": (_YELLOW, 7),
    "online": (_PURPLE, 8),
    "other": (_CYAN, 9),
}
#: configuration columns besides the label's own that may tell two configurations apart
VARYING = (("temperature", "T"), ("alpha", "α"))

#: value range of each metric the figures draw (intervals are clipped to it, axes fit it)
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "a_accuracy": (0.0, 1.0), "d_accuracy": (0.0, 1.0), "ece": (0.0, 1.0),
    "top1_agreement": (0.0, 1.0), "teacher_agreement": (0.0, 1.0), "error_consistency": (-1.0, 1.0),
    "js_divergence": (0.0, math.log(2.0)), "teacher_js": (0.0, math.log(2.0)),
    "linear_cka": (0.0, 1.0), "teacher_cka": (0.0, 1.0), "cka": (0.0, 1.0),
}


def _get(row: Mapping, key: str):
    v = row.get(key) if hasattr(row, "get") else getattr(row, key, None)
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return v


def kind(row: Mapping) -> str:
    """teacher, independent, self-distilled, distilled, online, or the objective's name."""
    if _get(row, "role") == "teacher":
        return "teacher"
    mode = MODES.get(_get(row, "distill") or "none")
    objective = _get(row, "objective") or "kd"
    if mode is None:
        return "other"
    if mode.distilled and objective != "kd":
        return objective.rsplit(".", 1)[-1] if objective.rsplit(".", 1)[-1] in KINDS else (
            objective if objective in KINDS else "other")
    return mode.kind


def base_label(row: Mapping) -> str:
    """The configuration's label without α / T (see the module docstring)."""
    text = run_label(_get(row, "model") or "?", _get(row, "distill"), _get(row, "teacher_model"),
                     _get(row, "objective"), _get(row, "role"))
    if _get(row, "role") == "teacher":
        return text
    transfer = _get(row, "transfer")
    if transfer:
        text += f" +{transfer}"
    return text


def _number(v) -> str:
    return f"{float(v):g}"


class Style:
    """Labels and colours for the configurations of one set of runs (a report, a notebook)."""

    def __init__(self, frame: pd.DataFrame | Iterable[Mapping] | None = None):
        rows = _rows(frame)
        groups: dict[str, set] = {}
        for row in rows:
            groups.setdefault(base_label(row), set()).add(tuple(_get(row, c) for c, _ in VARYING))
        #: for each base label, which of VARYING take more than one value among its runs
        self.vary = {b: [i for i in range(len(VARYING)) if len({v[i] for v in values}) > 1]
                     for b, values in groups.items()}
        self.labels_seen = list(dict.fromkeys(self.label(row) for row in rows))
        self._kinds = {self.label(r): kind(r) for r in rows}
        self._palette = make_palette(self.labels_seen, self._kinds)

    # -- labels -------------------------------------------------------------------------------
    def label(self, row: Mapping) -> str:
        base = base_label(row)
        extra = [f"{VARYING[i][1]}={_number(_get(row, VARYING[i][0]))}" for i in self.vary.get(base, [])
                 if _get(row, VARYING[i][0]) is not None]
        return " ".join([base, *extra])

    def labels(self, frame: pd.DataFrame) -> pd.Series:
        """The label of every row of a frame with run columns (model, role, distill, ...)."""
        return pd.Series([self.label(r) for r in _rows(frame)], index=frame.index, dtype=object)

    def run_label(self, run) -> str:
        """A run's configuration label and seed, for per-run axes (heatmaps): ``… · s1``."""
        return f"{self.label(_run_row(run))} · s{run.seed}"

    # -- colours ------------------------------------------------------------------------------
    def palette(self, labels: Iterable[str] | None = None) -> dict[str, str]:
        """Colour of each label (labels this style has not seen get colours of their own)."""
        labels = list(labels) if labels is not None else self.labels_seen
        missing = [lb for lb in labels if lb not in self._palette]
        if missing:
            self._palette.update(make_palette(missing, {}))
        return {lb: self._palette[lb] for lb in labels}

    def order(self, labels: Iterable[str]) -> list[str]:
        """Labels in legend order: teachers, independent, self-distilled, distilled, objectives, online."""
        seen = {lb: i for i, lb in enumerate(self.labels_seen)}
        rank = {lb: KINDS.get(k, KINDS["other"])[1] for lb, k in self._kinds.items()}
        return sorted(dict.fromkeys(labels), key=lambda lb: (rank.get(lb, _rank_from_text(lb)),
                                                            seen.get(lb, len(seen)), lb))


def _rank_from_text(label: str) -> int:
    if label.endswith(" teacher"):
        return KINDS["teacher"][1]
    for name, rank in (("independent", 1), ("self-distilled", 2), ("online", 8)):
        if name in label:
            return rank
    return KINDS["distilled"][1]


def _rows(frame) -> list[Mapping]:
    if frame is None:
        return []
    if isinstance(frame, pd.DataFrame):
        return frame.to_dict("records")
    return [r if isinstance(r, Mapping) else _run_row(r) for r in frame]


def _run_row(run) -> dict:
    return {"model": run.model, "role": run.role, "distill": run.distill, "objective": run.objective,
            "teacher_model": run.teacher_model, "transfer": run.transfer, "alpha": run.alpha,
            "temperature": run.temperature}


def _shade(colour: str, t: float) -> str:
    """``colour`` mixed toward black (t < 0) or white (t > 0) by |t|."""
    from matplotlib.colors import to_hex, to_rgb

    c = np.array(to_rgb(colour))
    target = np.zeros(3) if t < 0 else np.ones(3)
    return to_hex(c + (target - c) * abs(t))


def make_palette(labels: list[str], kinds: Mapping[str, str]) -> dict[str, str]:
    """Colours by kind, shades within a kind (darkest first, in label order)."""
    by_kind: dict[str, list[str]] = {}
    for lb in labels:
        by_kind.setdefault(kinds.get(lb) or _kind_from_text(lb), []).append(lb)
    out = {}
    for k, members in by_kind.items():
        base = KINDS.get(k, KINDS["other"])[0]
        n = len(members)
        spread = 0.0 if n == 1 else min(0.55, 0.2 * (n - 1))
        for i, lb in enumerate(members):
            t = -spread / 2 + spread * i / max(1, n - 1) if n > 1 else 0.0
            if k == "teacher":  # greys: from dark to mid grey
                t = 0.45 * i / max(1, n - 1) if n > 1 else 0.0
            out[lb] = _shade(base, t)
    return out


def _kind_from_text(label: str) -> str:
    rank = _rank_from_text(label)
    return next(k for k, (_, r) in KINDS.items() if r == rank)


def clip_interval(mean, half_width, metric: str | None):
    """(lower, upper) error-bar lengths of ``mean ± half_width`` clipped to the metric's range;
    a missing half-width (one seed) draws no bar."""
    mean = np.asarray(mean, dtype=float)
    hw = np.nan_to_num(np.asarray(half_width, dtype=float), nan=0.0)
    lo, hi = METRIC_RANGE.get(metric or "", (-np.inf, np.inf))
    lower = mean - np.clip(mean - hw, lo, hi)
    upper = np.clip(mean + hw, lo, hi) - mean
    return np.vstack([np.clip(lower, 0, None), np.clip(upper, 0, None)])


def metric_limits(metric: str | None, values: Iterable[float] = ()) -> tuple[float, float] | None:
    """Axis limits for ``metric``: [0, 1] (a hair more, so a whisker clipped at 1 shows its cap)
    for metrics in [0, 1]; for others the span of ``values`` (include 0 for bars), padded and
    kept within the metric's range; None for a metric without a known range."""
    rng = METRIC_RANGE.get(metric or "")
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if rng is None:
        return None
    lo, hi = rng
    if (lo, hi) == (0.0, 1.0):
        return (0.0, 1.02)
    if not len(vals):
        return rng
    pad = 0.05 * max(vals.max() - vals.min(), 0.05 * (hi - lo))
    return (max(lo - pad, vals.min() - pad), min(hi + pad, vals.max() + pad))


def legend_outside(ax, title: str | None = None, ncol: int = 1, **kw) -> None:
    """The legend to the right of the axes, clear of the data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
              fontsize=8, title=title, title_fontsize=8, ncols=ncol, **kw)


# -- names a reader understands ------------------------------------------------------------------
#: metric ids (of runs, of the transfer map, of the teachers' own bias) -> axis / title labels
METRIC_LABELS: dict[str, str] = {
    "accuracy": "accuracy", "a_accuracy": "A-accuracy (1–4 attractors)", "d_accuracy": "D-accuracy",
    "ece": "calibration error (ECE)", "top1_agreement": "top-1 agreement", "error_consistency": "error consistency",
    "teacher_agreement": "agreement with the teacher", "js_divergence": "JS divergence",
    "teacher_js": "JS divergence from the teacher", "linear_cka": "linear CKA", "cka": "CKA",
    "teacher_cka": "linear CKA with the teacher", "consistency": "prediction unchanged under shift",
    "test": "test accuracy", "ood_mean": "mean OOD accuracy (20 sets)",
    "translated": "accuracy on shifted digits (1–5 px)", "scaled": "accuracy on scaled digits",
    "shift_consistency": "prediction unchanged under shift (1–5 px)",
    "teacher_agreement_ood": "agreement with the teacher (OOD sets)",
    "teacher_js_ood": "JS divergence from the teacher (OOD sets)",
    "teacher_cka_probe": "linear CKA with the teacher (probe set)",
    "attractor_drop_4": "accuracy drop, 0 → 4 attractors", "test_deep": "accuracy on deeper sentences",
    "teacher_agreement_attractors": "agreement with the teacher (attractor sets)",
    "teacher_js_attractors": "JS divergence from the teacher (attractor sets)",
    "eval_mean": "mean accuracy on the eval splits", "teacher_agreement_eval": "agreement with the teacher (eval splits)",
    "teacher_js_eval": "JS divergence from the teacher (eval splits)", "loss": "loss",
}
#: display labels and colours as data: this file, then the one ``$BIASKD_LABELS`` names
LABELS_FILE = Path(__file__).with_name("labels.yaml")
LABELS_ENV = "BIASKD_LABELS"


def load_labels(*paths: str | Path) -> dict[str, dict[str, str]]:
    """``{"scenarios": {name: title}, "models": {name: colour}}`` from YAML files (``labels.yaml``'s
    shape), a later file's entries over an earlier one's; a ConfigError naming the file and key."""
    out: dict[str, dict[str, str]] = {"scenarios": {}, "models": {}}
    for path in map(Path, paths):
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the labels ({exc})") from None
        if not isinstance(spec, dict) or set(spec) - set(out):
            raise ConfigError(f"{path}: the labels file has the sections {', '.join(out)} only")
        for section, entries in spec.items():
            if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
                raise ConfigError(f"{path}: {section} maps a name to a text")
            bad = [k for k, v in entries.items() if section == "models" and not re.fullmatch(r"#[0-9a-fA-F]{6}", v)]
            if bad:
                raise ConfigError(f"{path}: models.{bad[0]} must be a colour #rrggbb; got {entries[bad[0]]!r}")
            out[section].update({str(k): v for k, v in entries.items()})
    return out


_LABELS = load_labels(LABELS_FILE, *([os.environ[LABELS_ENV]] if os.environ.get(LABELS_ENV) else []))
#: scenario ids -> titles
SCENARIO_LABELS: dict[str, str] = _LABELS["scenarios"]
_SPLIT_WORDS = {"test": "test", "valid": "validation", "train": "training", "probe": "probe set",
                "test_deep": "deeper sentences", "shifted": "shifted"}


def metric_label(metric: str) -> str:
    """``top1_agreement`` -> ``top-1 agreement``; an id without a label reads with spaces."""
    return METRIC_LABELS.get(metric, str(metric).replace("_", " "))


def split_label(split: str) -> str:
    """``translated_s3`` -> ``translated, severity 3``; ``attractors_2`` -> ``2 attractors``."""
    split = str(split)
    if split in _SPLIT_WORDS:
        return _SPLIT_WORDS[split]
    m = re.fullmatch(r"attractors_(\d+)", split)
    if m:
        return f"{m.group(1)} attractor{'s' if m.group(1) != '1' else ''}"
    m = re.fullmatch(r"([a-z]+)_s(\d+)", split)
    if m:
        return f"{m.group(1)}, severity {m.group(2)}"
    return split.replace("_", " ")


def scenario_label(scenario: str) -> str:
    return SCENARIO_LABELS.get(scenario, str(scenario).replace("_", " "))


def with_n(label: str, n) -> str:
    """A legend entry with the number of runs (seeds) behind it: ``cnn_gp (n=5)``."""
    return f"{label} (n={int(n)})" if n is not None and not (isinstance(n, float) and math.isnan(n)) else label


# -- architectures: one colour each, in every panel --------------------------------------------------
#: architecture -> colour (figures that compare architectures, e.g. the teachers' own bias)
MODEL_COLOURS: dict[str, str] = _LABELS["models"]


def model_colour(model: str) -> str:
    """The architecture's colour; one not listed gets a grey of its own (stable across figures)."""
    if model in MODEL_COLOURS:
        return MODEL_COLOURS[model]
    import zlib

    return _shade(_GREY, -0.5 + (zlib.crc32(str(model).encode()) % 100) / 100)


# -- shared colour limits, saving ------------------------------------------------------------------
def symmetric_limit(values: Iterable[float], floor: float = 0.01) -> float:
    """One limit ``L`` for a diverging colour map on ``[-L, L]`` that every value fits, so several
    heatmaps drawn with it share their colours."""
    vals = np.abs(np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float))
    return max(floor, float(vals.max()) if len(vals) else floor)


def text_colour(rgba) -> str:
    """Black or white, whichever reads on a cell of colour ``rgba`` (relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def save(fig, path, dpi: int = 130):
    """Save with every label inside the image (legends and colour-bar labels outside the axes
    included), then close the figure."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path

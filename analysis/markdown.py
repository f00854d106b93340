"""The report as it is written: Markdown text, tables, figures and CSVs in one folder.

:func:`markdown_table` renders a frame as a GitHub Markdown table; :class:`Report` collects a
report's lines and writes its figures (PNG) and CSVs beside ``report.md``. The sections that
fill it are in :mod:`analysis.sections_metrics` and :mod:`analysis.sections_representations`;
the command is :mod:`analysis.report`.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.style import Style  # noqa: E402


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """GitHub Markdown table; floats to ``digits`` decimals, NaN/None as ``–``."""
    if index:
        df = df.reset_index()
    if df.empty:
        return "_(empty)_"

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return "–"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


class Report:
    """Accumulates Markdown, figures and CSVs in ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.files: list[str] = []
        self.style = Style()  # labels and colours of the runs' configurations, set by build_report

    def h(self, level: int, text: str) -> None:
        self.lines += ["", "#" * level + " " + text, ""]

    def p(self, text: str) -> None:
        self.lines += [text, ""]

    def missing(self, text: str) -> None:
        self.lines += [f"> **Not available:** {text}", ""]

    def table(self, df: pd.DataFrame, csv: str | None = None, digits: int = 3) -> None:
        self.lines += [markdown_table(df, digits), ""]
        if csv:
            self.csv(df, csv)

    def csv(self, df: pd.DataFrame, name: str) -> None:
        df.to_csv(self.out / name, index=False)
        self.files.append(name)
        self.lines += [f"CSV: [`{name}`]({name})", ""]

    def figure(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(self.out / name, dpi=120, bbox_inches="tight")  # legends outside the axes included
        plt.close(fig)
        self.files.append(name)
        self.lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]

    def write(self) -> Path:
        path = self.out / "report.md"
        path.write_text("\n".join(self.lines).lstrip() + "\n")
        return path

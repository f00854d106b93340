"""What the fault-injection tests share: tiny trained runs copied per case, the ways a file is
damaged, a kill simulated inside a rename, and the comparisons that tell a run from its
reference to the bit."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from biaskd.record.artifacts import RunDir
from biaskd.record.schema import TMP_SUFFIX
from tiny import TINY, compose_cfg

REPO = Path(__file__).resolve().parents[2]
#: subprocesses run this checkout's code, whatever their working directory
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore")

#: the two tiny runs every module trains once: an independent MLP, and an MLP distilled from a CNN
#: (whose teacher is trained first)
KINDS = {"independent": [], "student": ["distill=cross"]}


def cfg(runs: Path, kind: str = "independent", *extra: str):
    return compose_cfg([*TINY, *KINDS[kind], *extra], runs)


@dataclass
class Runs:
    """A runs folder holding the tiny runs (``root``) and where each of them is."""

    root: Path
    independent: Path
    student: Path
    teacher: Path

    def copy(self, dest: Path) -> "Runs":
        """A copy of the whole runs folder at ``dest`` (the runs keep their names)."""
        shutil.copytree(self.root, dest, symlinks=True)
        return Runs(dest, *(dest / p.relative_to(self.root) for p in (self.independent, self.student, self.teacher)))


def train_runs(root: Path) -> Runs:
    from biaskd.run.train import train

    student = train(cfg(root, "student"))
    independent = train(cfg(root, "independent"))  # compared with the student's teacher (teacher.compare=auto)
    return Runs(root, independent.path, student.path, student.teacher_dir.path)


# -- damage ------------------------------------------------------------------------------------------
def flip(path: Path, where: float = 0.5) -> None:
    """One bit flipped, as a disk or a copy may leave it."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(bytes(data))


def damage(path: Path, how: str) -> bytes | None:
    """``delete`` or ``flip`` the file; returns its bytes afterwards (None once deleted)."""
    if how == "delete":
        path.unlink()
        return None
    flip(path)
    return path.read_bytes()


class Killed(BaseException):
    """What a kill would be: no ``except Exception`` stops it."""


def kill_in_rename(monkeypatch, target: str, nth: int = 1, content: bytes | None = None) -> dict:
    """Make the ``nth`` rename of a temporary file onto a path ending in ``target`` (whose text
    holds ``content``, if given) fail as a kill would: the temporary file stays behind (a copy
    named ``.<name>.killed.tmp``), the real file is untouched, and :class:`Killed` is raised."""
    real = os.replace
    seen = {"renames": 0, "killed": False}

    def replace(src, dst, *args, **kwargs):
        src, dst = Path(src), Path(dst)
        if dst.as_posix().endswith("/" + target) and (content is None or content in src.read_bytes()):
            seen["renames"] += 1
            if seen["renames"] == nth:
                seen["killed"] = True
                os.link(src, src.with_name(f".{dst.name}.killed{TMP_SUFFIX}"))
                raise Killed(f"killed while renaming {src.name} to {dst}")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return seen


# -- comparisons ---------------------------------------------------------------------------------------
def log_rows(run: Path) -> list[dict]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(run: RunDir, reference: RunDir) -> None:
    """The numbers of ``run`` are the reference's: metrics per split, final weights, the log."""
    assert run.metrics["splits"] == reference.metrics["splits"]
    a, b = run.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log_rows(run.path) == log_rows(reference.path)


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` and its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]

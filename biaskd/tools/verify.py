"""Check run dirs against their manifests.

    python -m biaskd.verify RUNS...

Every complete run dir at or below the given folders is checked file by file (size and SHA-256
against ``MANIFEST.json``; ``last.ckpt`` and teacher caches against their ``.sha256`` files). A
complete run that has lost its manifest (format 2 on) or its meta.json is bad too; a run dir is
found by any of its files (:func:`biaskd.record.schema.is_run_dir`), not by meta.json alone.
One line per bad run; exit status 1 if any is bad, 0 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from biaskd.record import artifacts, schema


def run_dirs(*roots: str | Path):
    """Run dirs (folders with meta.json, or any other file that makes one: a run that lost its
    meta.json is one) at or below ``roots``; hidden folders (``.bad/``) skipped."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if schema.is_run_dir(filenames, dirnames):
                dirnames[:] = []
                yield Path(dirpath)
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biaskd.verify", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs or folders of run dirs")
    args = parser.parse_args(argv)
    counts = {"ok": 0, "bad": 0, "incomplete": 0, "no manifest": 0}
    for root in args.runs:
        if not Path(root).exists():
            print(f"{root}: no such file or folder", file=sys.stderr)
            return 2
    for path in run_dirs(*args.runs):
        run = artifacts.RunDir(path)
        if not run.is_complete:
            counts["incomplete"] += 1
            continue
        problems = run.verify()
        if problems:
            counts["bad"] += 1
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            print(f"BAD {path}: {problems[0].replace(str(path) + os.sep, '')}{more}")
        elif not (path / artifacts.MANIFEST).exists():
            counts["no manifest"] += 1  # format 1: nothing to check against
        else:
            counts["ok"] += 1
    print(", ".join(f"{n} {k}" for k, n in counts.items()) + " (checked: every file bit-identical to its "
          "manifest's SHA-256, on any machine; incomplete runs and runs written before manifests existed "
          "(format 1) are not checked)", file=sys.stderr)
    return 1 if counts["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall times beside the throughput ratios of :mod:`biaskd.bench`: linear CKA against its n x n
Gram reference (:mod:`biaskd.pairwise`), the README's main job from the command line, and where
a 100-epoch MNIST student's wall time goes, phase by phase (the end-to-end breakdown).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def bench_cka(n: int, d: int, repeats: int) -> dict:
    from biaskd.pairwise import linear_cka, linear_cka_gram

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ rng.standard_normal((d, d)).astype(np.float32) + rng.standard_normal((n, d)).astype(np.float32))
    fast_t, naive_t = [], []
    fast = naive = None
    for _ in range(repeats):
        t = time.perf_counter(); fast = linear_cka(x, y); fast_t.append(time.perf_counter() - t)
        t = time.perf_counter(); naive = linear_cka_gram(x, y); naive_t.append(time.perf_counter() - t)
    return {"ratio": statistics.median(fast_t) / statistics.median(naive_t), "fast_s": statistics.median(fast_t),
            "naive_s": statistics.median(naive_t), "fast": float(fast), "naive": float(naive),
            "abs_diff": abs(float(fast) - float(naive)), "n": n, "d": d}


def main_job_wall_time() -> float:
    with tempfile.TemporaryDirectory() as runs:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "biaskd.tools.cli", "-m", "experiment=mnist_main", f"runs_dir={runs}",
                        "trainer.enable_progress_bar=false"], check=True, capture_output=True)
        return time.perf_counter() - start


#: a lone run in a fresh interpreter: prints the seconds of its imports and of train(), and its phases
_LONE_RUN = """
import json, sys, time
t = time.perf_counter()
from hydra import compose, initialize_config_dir
from biaskd.run.train import train
from biaskd.tools.cli import CONF_DIR
imports = time.perf_counter() - t
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = compose("config", overrides=json.loads(sys.argv[1]))
t = time.perf_counter()
run = train(cfg)
print(json.dumps({"imports_s": imports, "total_s": time.perf_counter() - t, "phases_s": run.metrics["train"]["phases_s"]}))
"""


def lone_run_in_new_process(overrides: list[str]) -> dict:
    """One run in a fresh interpreter (nothing built in this process reused): its imports, its
    ``train`` seconds and its phases."""
    done = subprocess.run([sys.executable, "-c", _LONE_RUN, json.dumps(overrides)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(epochs: int = 100, seeds: tuple[int, ...] = (1, 2), experiment: str = "mnist_v2") -> dict:
    """Where an MNIST student's wall time goes (``experiment``: ``mnist_v2``, 4,500 training
    digits, or ``mnist_v3``, 54,000; independent MLP, ``epochs`` epochs, 21 eval splits, one
    thread): the process's imports (timed in a fresh
    interpreter), then per run the phases the driver records (``metrics.json``
    ``train.phases_s``). The first run builds the data (20 OOD splits, written to the runs
    folder's OOD cache); the next ones, as in a sweep's later jobs in one process, reuse it; a
    last run in a fresh interpreter loads the OOD sets from the cache (a sweep's job in another
    process, or the next lone run)."""
    from hydra import compose, initialize_config_dir

    from biaskd.run.train import train
    from biaskd.tools.cli import CONF_DIR

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import biaskd.run.train"], check=True, capture_output=True)
    imports = time.perf_counter() - t
    runs = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        def overrides(seed: int) -> list[str]:  # a lone student: no teacher to train or compare with
            return [f"experiment={experiment}", "distill=none", f"trainer.max_epochs={epochs}", f"seed={seed}",
                    f"runs_dir={tmp}", "threads=1", "teacher.compare=false", "trainer.enable_progress_bar=false"]

        for seed in seeds:
            t = time.perf_counter()
            run = train(compose("config", overrides=overrides(seed)))
            total = time.perf_counter() - t
            phases = run.metrics["train"]["phases_s"]
            runs.append({"seed": seed, "kind": "first" if not runs else "next", "total_s": total, "phases_s": phases,
                         "fit_share": phases["fit"] / total,
                         "fit_share_with_imports": phases["fit"] / (total + (imports if not runs else 0.0))})
        lone = lone_run_in_new_process(overrides(max(seeds) + 1))
        phases = lone["phases_s"]
        runs.append({"seed": max(seeds) + 1, "kind": "cached", "total_s": lone["total_s"], "phases_s": phases,
                     "imports_s": lone["imports_s"], "fit_share": phases["fit"] / lone["total_s"],
                     "fit_share_with_imports": phases["fit"] / (lone["total_s"] + lone["imports_s"])})
    return {"experiment": experiment, "epochs": epochs, "imports_s": imports, "runs": runs}


def epoch_60k(epochs: int = 2, per_call: tuple[int, ...] = (1, 8, 8, 1)) -> dict | None:
    """One epoch of protocol v3's student on MNIST's 54,000 training digits (``experiment=mnist_v3``,
    independent MLP, one thread, progress bar off), in a run's real Trainer, at each number of
    optimizer steps per ``training_step`` (``train.steps_per_call``) in ``per_call`` order (A B B A:
    the two sides of the ratio are neighbours). None when the data directory lacks the 60k."""
    from hydra import compose, initialize_config_dir

    from biaskd.errors import MissingDataError
    from biaskd.run.train import train
    from biaskd.tools.cli import CONF_DIR

    runs = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for i, k in enumerate(per_call):
            cfg = compose("config", overrides=["experiment=mnist_v3", "distill=none", f"trainer.max_epochs={epochs}",
                                               f"seed={i + 1}", f"runs_dir={tmp}", "threads=1", "teacher.compare=false",
                                               f"train.steps_per_call={k}", "trainer.enable_progress_bar=false"])
            try:
                run = train(cfg)
            except MissingDataError as exc:  # the 60k training images are not in the data directory
                print(f"[bench] 60k epoch skipped: {exc}", flush=True)
                return None
            phases = run.metrics["train"]["phases_s"]
            runs.append({"steps_per_call": k, "fit_s_per_epoch": phases["fit"] / epochs, "phases_s": phases})
    per_k = {k: statistics.median(r["fit_s_per_epoch"] for r in runs if r["steps_per_call"] == k)
             for k in dict.fromkeys(per_call)}
    return {"epochs": epochs, "runs": runs, "fit_s_per_epoch": per_k}


def format_epoch_60k(e: dict) -> str:
    ks = list(e["fit_s_per_epoch"])
    base = e["fit_s_per_epoch"][ks[0]]
    lines = ["\n## One epoch on MNIST's 60k training digits (protocol v3's student)\n",
             f"`experiment=mnist_v3 distill=none teacher.compare=false trainer.max_epochs={e['epochs']} threads=1`, "
             "54,000 digits (844 steps of 64) per epoch, the run's own Trainer; runs in the order "
             + ", ".join(f"{r['steps_per_call']}" for r in e["runs"]) + " steps per call.\n",
             "| `train.steps_per_call` | fit s per epoch (median) | vs one step per call |", "|---|---|---|"]
    for k in ks:
        lines.append(f"| {k} | {e['fit_s_per_epoch'][k]:.2f} | {base / e['fit_s_per_epoch'][k]:.3f}× |")
    return "\n".join(lines) + "\n"


def format_end_to_end(e: dict) -> str:
    order = [k for k in ("data", "teacher", "setup", "fit", "evaluate", "features", "teacher_measures")
             if k in e["runs"][0]["phases_s"]]
    lines = [f"\n## Where a {e['epochs']}-epoch MNIST student's wall time goes\n",
             f"`experiment={e.get('experiment', 'mnist_v2')} distill=none trainer.max_epochs={e['epochs']} threads=1`; importing the "
             f"training stack takes {e['imports_s']:.1f} s once per process.\n",
             "| run | total (s) | " + " | ".join(order) + " | training loop (fit) share |",
             "|---|---|" + "---|" * len(order) + "---|"]
    labels = {"first": "first in its process (builds the data, writes the OOD cache; + imports)",
              "next": "next in the same process", "cached": "a new process, OOD sets in the cache (+ its imports)"}
    for i, r in enumerate(e["runs"]):
        kind = r.get("kind", "first" if i == 0 else "next")  # reports made before the cache: no kind
        imports = 0.0 if kind == "next" else r.get("imports_s", e["imports_s"])
        share = r["fit_share"] if kind == "next" else r["fit_share_with_imports"]
        lines.append(f"| {labels[kind]} | {r['total_s'] + imports:.1f} | "
                     + " | ".join(f"{r['phases_s'][k]:.1f}" for k in order) + f" | {share:.0%} |")
    return "\n".join(lines) + "\n"

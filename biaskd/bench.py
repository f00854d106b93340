"""Side-by-side throughput benchmarks: ``python -m biaskd.bench [--quick]``.

Every comparison runs in one process, after a warm-up, alternating the contenders over repeats,
so that machine noise hits both sides alike; the claims are ratios: the median over repeats of
the ratio of each back-to-back pair (a slow drift in the machine's load cancels within a pair),
with the ratio of the two sides' median throughputs beside it.

1. ``kd_cached_vs_student``: offline KD with cached teacher logits ÷ the student alone;
2. ``kd_teacher_forward_vs_student``: KD with a teacher forward every step ÷ the student alone;
3. ``lightning_vs_plain``: Lightning ``fit`` ÷ a minimal hand-written PyTorch loop;
4. ``lightning_step_overhead``: what Lightning's loop costs per step whatever the model: the
   same two loops with a model that is one bias vector (no compute to speak of); the ms/step
   difference, and the best ``lightning_vs_plain`` it allows for the scenario's student;
5. ``cka_fast_vs_naive``: ``analysis.similarity.linear_cka`` time ÷ an n×n Gram version;
6. wall time of the README's main job (full mode only).

A measurement covers at least ``MIN_STEPS`` optimizer steps (whole epochs), so that one-off
costs of a ``fit`` (the first step's optimizer state, Lightning's first ``self.log``) weigh in
it about as little as in a real run.

Writes ``results/bench.json`` and ``results/bench.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from biaskd.data.base import Split, TensorBatches
from biaskd.losses import cross_entropy
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import DistillModule

REPO = Path(__file__).resolve().parent.parent

#: fewest optimizer steps in one measurement (quick, full)
MIN_STEPS = {True: 150, False: 300}
#: repeats (quick, full) of a scenario whose measurements take well under a second; others: REPEATS
FAST_SCENARIO_REPEATS = {"mnist": (9, 15)}
REPEATS = (3, 5)


class _Data(L.LightningDataModule):
    def __init__(self, split: Split, batch_size: int, lengths=None):
        super().__init__()
        self.batches = TensorBatches(split, batch_size, seed=0, lengths=lengths)

    def train_dataloader(self):
        return self.batches


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, deterministic=False,
    )


class _LoopTimer(L.Callback):
    """Time from the start to the end of the training loop (excludes one-off Trainer setup,
    which a real run amortises over many epochs; includes every per-step hook and log)."""

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_fit(module: L.LightningModule, split: Split, batch_size: int, epochs: int, lengths=None) -> float:
    """Examples per second of ``Trainer.fit``'s training loop."""
    timer = _LoopTimer()
    trainer = _trainer(epochs)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=_Data(split, batch_size, lengths))
    return len(split) * epochs / timer.seconds


def plain_loop(model: torch.nn.Module, split: Split, batch_size: int, epochs: int, lengths=None) -> float:
    """Examples per second of the minimal loop a person would write by hand."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = TensorBatches(split, batch_size, seed=0, lengths=lengths)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            loss = cross_entropy(model(batch["x"]), batch["y"])
            loss.backward()
            opt.step()
    return len(split) * epochs / (time.perf_counter() - start)


def epochs_for(split: Split, batch_size: int, epochs: int, min_steps: int) -> int:
    """At least ``epochs``, and enough whole epochs for ``min_steps`` steps."""
    steps = -(-len(split) // batch_size)
    return max(epochs, -(-min_steps // steps))


class ConstantModel(torch.nn.Module):
    """Logits = a learned bias, whatever the input: a step with (next to) no compute, so that
    the time of a training loop around it is the loop's own."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def _median_ratio(fn_a, fn_b, repeats: int) -> dict:
    """Alternate a and b ``repeats`` times (after one warm-up each): the median of the per-pair
    throughput ratios a_i / b_i (``ratio``) and the ratio of the median throughputs."""
    fn_a(), fn_b()
    a, b = [], []
    for _ in range(repeats):
        a.append(fn_a())
        b.append(fn_b())
    ma, mb = statistics.median(a), statistics.median(b)
    return {"ratio": statistics.median(x / y for x, y in zip(a, b)), "ratio_of_medians": ma / mb,
            "a_median": ma, "b_median": mb, "a": a, "b": b}


def scenario_pair(name: str):
    """(train split, student factory, teacher model, batch size, lengths) of a scenario's default pair."""
    torch.manual_seed(0)
    if name == "mnist":
        from biaskd.data.mnist import MnistData
        from biaskd.models.vision import CNN, MLP

        data = MnistData(data_dir=None, batch_size=64, seed=0)
        data.setup()
        teacher = CNN()
        return data.train, (lambda: MLP()), teacher, 64, None
    if name == "sva":
        from biaskd.data.sva import SVAData
        from biaskd.models.sequence import build_sequence_model

        data = SVAData(batch_size=64, seed=0)
        data.setup()
        v = data.vocab_size
        teacher = build_sequence_model("lstm", v, 2)
        student = lambda: build_sequence_model("transformer", v, 2)  # noqa: E731
        return data.train, student, teacher, 64, data.lengths(data.train)
    raise ValueError(name)


def bench_kd(name: str, epochs: int, repeats: int, min_steps: int = 0) -> dict:
    split, make_student, teacher, bs, lengths = scenario_pair(name)
    epochs = epochs_for(split, bs, epochs, min_steps)
    teacher.eval()
    with torch.no_grad():
        cached = torch.cat([teacher(split.x[i:i + 1024]) for i in range(0, len(split), 1024)])

    def alone():
        return lightning_fit(ClassifierModule(make_student()), split, bs, epochs, lengths)

    def kd_cached():
        return lightning_fit(DistillModule(make_student(), teacher_logits=cached, temperature=2.0), split, bs, epochs, lengths)

    def kd_forward():
        return lightning_fit(DistillModule(make_student(), teacher=teacher, teacher_outputs="forward", temperature=2.0),
                             split, bs, epochs, lengths)

    steps = epochs * -(-len(split) // bs)
    return {
        "kd_cached_vs_student": _median_ratio(kd_cached, alone, repeats) | {"batch_size": bs, "steps": steps},
        "kd_teacher_forward_vs_student": _median_ratio(kd_forward, alone, repeats) | {"batch_size": bs, "steps": steps},
    }


def bench_lightning(name: str, epochs: int, repeats: int, min_steps: int = 0) -> dict:
    split, make_student, _, bs, lengths = scenario_pair(name)
    epochs = epochs_for(split, bs, epochs, min_steps)
    return _median_ratio(
        lambda: lightning_fit(ClassifierModule(make_student()), split, bs, epochs, lengths),
        lambda: plain_loop(make_student(), split, bs, epochs, lengths),
        repeats,
    ) | {"batch_size": bs, "steps": epochs * -(-len(split) // bs)}


def bench_lightning_overhead(name: str, epochs: int, repeats: int, min_steps: int = 0,
                             plain_examples_per_s: float | None = None) -> dict:
    """Lightning's per-step cost around a step that does (next to) nothing, over the same hand loop."""
    split, _, _, bs, lengths = scenario_pair(name)
    epochs = epochs_for(split, bs, epochs, min_steps)
    c = int(split.y.max()) + 1
    r = _median_ratio(
        lambda: lightning_fit(ClassifierModule(ConstantModel(c)), split, bs, epochs, lengths),
        lambda: plain_loop(ConstantModel(c), split, bs, epochs, lengths),
        repeats,
    )
    r["overhead_ms_per_step"] = 1e3 * bs * (1 / r["a_median"] - 1 / r["b_median"])
    r["batch_size"] = bs
    r["steps"] = epochs * -(-len(split) // bs)
    if plain_examples_per_s:
        # the student's hand-loop step plus only this overhead: the best lightning_vs_plain can be
        step_ms = 1e3 * bs / plain_examples_per_s
        r["student_plain_ms_per_step"] = step_ms
        r["best_lightning_vs_plain"] = step_ms / (step_ms + r["overhead_ms_per_step"])
    return r


def bench_cka(n: int, d: int, repeats: int) -> dict:
    from analysis.similarity import linear_cka, linear_cka_gram

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
        subprocess.run([sys.executable, "-m", "biaskd.cli", "-m", "experiment=mnist_main", f"runs_dir={runs}",
                        "trainer.enable_progress_bar=false"], check=True, capture_output=True)
        return time.perf_counter() - start


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _fmt_load(machine: dict) -> str:
    a, b = machine.get("loadavg_1min_start"), machine.get("loadavg_1min_end")
    return "unknown" if a is None or b is None else f"{a:.2f} at the start, {b:.2f} at the end"


def _fmt_repeats(repeats: dict) -> str:
    return ", ".join(f"{n} ({k})" for k, n in repeats.items())


def _ms(r: dict, side: str) -> float:
    return 1e3 * r["batch_size"] / r[side]


def _fmt(results: dict) -> str:
    lines = ["| benchmark | scenario | ratio | target | detail |", "|---|---|---|---|---|"]
    targets = {"kd_cached_vs_student": "≥ 0.95", "kd_teacher_forward_vs_student": "(reference)",
               "lightning_vs_plain": "≥ 0.90", "lightning_step_overhead": "(reference)",
               "cka_fast_vs_naive": "≪ 1, equal to 1e-6"}
    for key, per in results["benchmarks"].items():
        for scen, r in per.items():
            if key == "cka_fast_vs_naive":
                detail = f"fast {r['fast_s']*1e3:.0f} ms, naive {r['naive_s']*1e3:.0f} ms, |Δ| = {r['abs_diff']:.1e}"
            elif key == "lightning_step_overhead":
                detail = (f"Lightning's loop adds {r['overhead_ms_per_step']:.2f} ms/step to a constant model's step "
                          f"({_ms(r, 'a_median'):.2f} vs {_ms(r, 'b_median'):.2f} ms)")
                if "best_lightning_vs_plain" in r:
                    detail += (f"; on the student's {r['student_plain_ms_per_step']:.2f} ms hand-loop step that "
                               f"alone leaves lightning_vs_plain ≈ {r['best_lightning_vs_plain']:.3f} at best")
            else:
                detail = (f"medians {r['a_median']:.0f} vs {r['b_median']:.0f} examples/s "
                          f"({_ms(r, 'a_median'):.2f} vs {_ms(r, 'b_median'):.2f} ms/step; ratio of medians "
                          f"{r['ratio_of_medians']:.3f}), batch {r['batch_size']}, {r['steps']} steps")
            lines.append(f"| {key} | {scen} | {r['ratio']:.3f} | {targets[key]} | {detail} |")
    if results.get("main_job_wall_s") is not None:
        lines.append(f"| main job wall time | mnist | — | ≤ 600 s | {results['main_job_wall_s']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; skip the main-job wall time")
    ap.add_argument("--scenarios", default="mnist,sva")
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    epochs = 1 if args.quick else 2
    which = 0 if args.quick else 1
    repeats = REPEATS[which]
    scenarios = [s for s in args.scenarios.split(",") if s]
    min_steps = MIN_STEPS[args.quick]
    start, load_start = time.perf_counter(), _loadavg()
    benchmarks: dict[str, dict] = {"kd_cached_vs_student": {}, "kd_teacher_forward_vs_student": {},
                                   "lightning_vs_plain": {}, "lightning_step_overhead": {}, "cka_fast_vs_naive": {}}
    scenario_repeats = {scen: FAST_SCENARIO_REPEATS.get(scen, REPEATS)[which] for scen in scenarios}
    for scen in scenarios:
        reps = scenario_repeats[scen]
        print(f"[bench] {scen}: KD throughput", flush=True)
        kd = bench_kd(scen, epochs, reps, min_steps)
        for k, v in kd.items():
            benchmarks[k][scen] = v
        print(f"[bench] {scen}: Lightning vs plain loop", flush=True)
        lp = benchmarks["lightning_vs_plain"][scen] = bench_lightning(scen, epochs, reps, min_steps)
        print(f"[bench] {scen}: Lightning's per-step overhead", flush=True)
        benchmarks["lightning_step_overhead"][scen] = bench_lightning_overhead(scen, epochs, reps, min_steps,
                                                                               lp["b_median"])
    print("[bench] CKA", flush=True)
    benchmarks["cka_fast_vs_naive"]["n=10000,d=512"] = bench_cka(10_000, 512, repeats)
    results = {
        "command": "python -m biaskd.bench" + (" --quick" if args.quick else ""),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other processes' load skews ratios (both sides are timed, but not at the same instant)
                    "loadavg_1min_start": load_start, "loadavg_1min_end": _loadavg()},
        "repeats": {**scenario_repeats, "cka": repeats},
        "min_epochs_per_measurement": epochs, "min_steps_per_measurement": min_steps,
        "benchmarks": benchmarks,
        "main_job_wall_s": None if args.quick else main_job_wall_time(),
    }
    results["bench_wall_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    table = _fmt(results)
    (out / "bench.md").write_text(
        f"# Benchmarks\n\nMade by `{results['command']}` on {results['machine']['cpus']} CPU cores "
        f"(torch {torch.__version__}, {results['machine']['torch_threads']} threads), {results['bench_wall_s']:.0f} s, "
        f"1-minute load average {_fmt_load(results['machine'])}. Each training ratio is the median over "
        f"{_fmt_repeats(results['repeats'])} alternating repeats (after a warm-up) of a / b in back-to-back "
        f"pairs; each training measurement covers at least {min_steps} steps.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()

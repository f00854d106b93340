"""Side-by-side throughput benchmarks: ``python -m biaskd.bench [--quick]``.

Every comparison runs in one process, after a warm-up, over rounds that run every contender
once (in A B B A order), so that machine noise hits all sides alike; the claims are ratios:
the median over rounds of the ratio within each round (a slow drift in the machine's load
cancels within a round), with the ratio of the two sides' median throughputs beside it.

1. ``kd_cached_vs_student``: offline KD with cached teacher logits ÷ the student alone;
2. ``kd_teacher_forward_vs_student``: KD with a teacher forward every step ÷ the student alone;
3. ``lightning_vs_plain``: Lightning ``fit`` (a bare Trainer) ÷ a minimal hand-written loop;
4. ``run_trainer_vs_plain``: ``fit`` with the Trainer a run uses (``conf/trainer/cpu.yaml``,
   its callbacks, CSV logger and progress bar) ÷ the same hand loop;
5. ``lightning_step_overhead``: what the loops cost per step whatever the model: the same
   loops with a model that is one bias vector (no compute to speak of); the ms/step
   differences, the best ``lightning_vs_plain`` they allow for the scenario's student, and
   what Lightning's stock (every-step) progress bar would add;
6. ``cka_fast_vs_naive``: ``biaskd.measures.linear_cka`` time ÷ an n×n Gram version;
7. wall time of the README's main job (full mode only).

A measurement covers at least the steps of ``SCENARIO_PLAN`` (``MIN_STEPS`` for other
scenarios; whole epochs, or a seeded subset of batches), so that one-off
costs of a ``fit`` (the first step's optimizer state, Lightning's first ``self.log``) weigh in
it about as little as in a real run.

Writes ``results/bench.json`` and ``results/bench.md``.
"""
from __future__ import annotations

import argparse
import contextlib
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
#: repeats (quick, full) of the CKA timing and of a scenario not in SCENARIO_PLAN
REPEATS = (3, 5)
#: (repeats, steps per measurement) with and without --quick: MNIST steps take a few ms, so its
#: ratios are the closest calls and many short rounds resist bursts of load best; SVA steps take
#: ~40 ms, so a quick measurement is a seeded subset of 100 batches (see measurement_split)
SCENARIO_PLAN = {"mnist": {True: (15, 150), False: (25, 300)},
                 "sva": {True: (4, 100), False: (5, 300)}}
#: steps of a training contender's warm-up run
WARMUP_STEPS = 20


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


def run_trainer_fit(module: L.LightningModule, split: Split, batch_size: int, epochs: int, lengths=None,
                    stock_progress_bar: bool = False) -> float:
    """Examples per second of ``Trainer.fit`` as a run trains: the Trainer of
    :func:`biaskd.train.make_trainer` with ``conf/trainer/cpu.yaml`` (deterministic algorithms,
    progress bar), a CSV logger, the epoch checkpoint, the finite-loss guard and the
    training-path recorder (no steps recorded mid-run). The bar draws to /dev/null.
    ``stock_progress_bar``: Lightning's own bar, redrawn every step, in place of ours."""
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from biaskd.artifacts import RunDir
    from biaskd.modules.callbacks import ThrottledProgressBar
    from biaskd.train import make_trainer

    tcfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "trainer" / "cpu.yaml"))
    tcfg["max_epochs"] = epochs
    timer = _LoopTimer()
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull, \
            contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        run = RunDir(tmp)
        trainer = make_trainer(tcfg, run, [CSVLogger(tmp, name="logs", version="")], split.subset(range(64)), [])
        trainer.callbacks.insert(0, timer)  # its on_train_end first: the final path record is not a step cost
        if stock_progress_bar:
            i = next(i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, ThrottledProgressBar))
            trainer.callbacks[i] = TQDMProgressBar()
        trainer.fit(module, datamodule=_Data(split, batch_size, lengths))
    return len(split) * epochs / timer.seconds


def plain_loop(model: torch.nn.Module, split: Split, batch_size: int, epochs: int, lengths=None) -> float:
    """Examples per second of the minimal loop a person would write by hand."""
    torch.use_deterministic_algorithms(False)  # a Trainer with deterministic=True leaves it on
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


def measurement_split(split: Split, lengths, batch_size: int, epochs: int, steps: int):
    """The split (and lengths) one measurement trains on: all of it, or, when ``epochs`` epochs
    would take more than ``steps`` steps, a seeded random subset of ``steps`` batches."""
    n = batch_size * steps
    if steps <= 0 or epochs * len(split) <= n:
        return split, lengths
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return split.subset(idx), None if lengths is None else lengths[idx]


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


def round_robin(contenders: dict, repeats: int, warmup: dict | None = None) -> dict[str, list[float]]:
    """Run every contender once as a warm-up (``warmup``'s shorter version of it, if given),
    then ``repeats`` rounds that run each once, in the given order and then reversed (A B B A):
    neighbours stay neighbours, and a steady drift in the machine's speed cancels over two rounds."""
    names = list(contenders)
    for name in names:
        (warmup or contenders)[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(contenders[name]())
    return out


def pair_ratio(a: list[float], b: list[float]) -> dict:
    """The median of the per-round throughput ratios a_i / b_i (``ratio``; a slow drift in the
    machine's load cancels within a round) and the ratio of the median throughputs."""
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


def bench_training(name: str, epochs: int, repeats: int, min_steps: int = 0) -> dict:
    """The scenario's student trained five ways, in rounds: Lightning ``fit`` with a teacher
    forward per step, with cached KD, alone; the hand loop; the run's own Trainer."""
    split, make_student, teacher, bs, lengths = scenario_pair(name)
    split, lengths = measurement_split(split, lengths, bs, epochs, min_steps)
    epochs = epochs_for(split, bs, epochs, min_steps)
    teacher.eval()
    with torch.no_grad():
        cached = torch.cat([teacher(split.x[i:i + 1024]) for i in range(0, len(split), 1024)])

    def contenders(sp: Split, ep: int, lens) -> dict:
        fit = lambda module: lightning_fit(module, sp, bs, ep, lens)  # noqa: E731
        return {  # the ratios' pairs are neighbours in this order
            "kd_forward": lambda: fit(DistillModule(make_student(), teacher=teacher, teacher_outputs="forward",
                                                    temperature=2.0)),
            "kd_cached": lambda: fit(DistillModule(make_student(), teacher_logits=cached, temperature=2.0)),
            "student": lambda: fit(ClassifierModule(make_student())),
            "plain": lambda: plain_loop(make_student(), sp, bs, ep, lens),
            "run_trainer": lambda: run_trainer_fit(ClassifierModule(make_student()), sp, bs, ep, lens),
        }

    n = min(len(split), bs * WARMUP_STEPS)  # the first rows: cached-KD indices stay valid
    warm = contenders(split.subset(torch.arange(n)), 1, None if lengths is None else lengths[:n])
    t = round_robin(contenders(split, epochs, lengths), repeats, warmup=warm)
    info = {"batch_size": bs, "steps": epochs * -(-len(split) // bs)}
    return {
        "kd_cached_vs_student": pair_ratio(t["kd_cached"], t["student"]) | info,
        "kd_teacher_forward_vs_student": pair_ratio(t["kd_forward"], t["student"]) | info,
        "lightning_vs_plain": pair_ratio(t["student"], t["plain"]) | info,
        "run_trainer_vs_plain": pair_ratio(t["run_trainer"], t["plain"]) | info,
    }


def bench_lightning_overhead(name: str, epochs: int, repeats: int, min_steps: int = 0,
                             plain_examples_per_s: float | None = None) -> dict:
    """What the loops cost per step around a step that does (next to) nothing: Lightning's bare
    ``fit``, the run's Trainer with our progress bar and with Lightning's stock one, over the
    same hand loop."""
    split, _, _, bs, lengths = scenario_pair(name)
    split, lengths = measurement_split(split, lengths, bs, epochs, min_steps)
    epochs = epochs_for(split, bs, epochs, min_steps)
    c = int(split.y.max()) + 1
    t = round_robin({
        "lightning": lambda: lightning_fit(ClassifierModule(ConstantModel(c)), split, bs, epochs, lengths),
        "plain": lambda: plain_loop(ConstantModel(c), split, bs, epochs, lengths),
        "run_trainer": lambda: run_trainer_fit(ClassifierModule(ConstantModel(c)), split, bs, epochs, lengths),
        "run_trainer_stock_bar": lambda: run_trainer_fit(ClassifierModule(ConstantModel(c)), split, bs, epochs,
                                                         lengths, stock_progress_bar=True),
    }, repeats)
    ms = {k: 1e3 * bs / statistics.median(v) for k, v in t.items()}
    r = pair_ratio(t["lightning"], t["plain"])
    r["overhead_ms_per_step"] = ms["lightning"] - ms["plain"]
    r["run_trainer_overhead_ms_per_step"] = ms["run_trainer"] - ms["plain"]
    r["stock_bar_overhead_ms_per_step"] = ms["run_trainer_stock_bar"] - ms["plain"]
    r["batch_size"] = bs
    r["steps"] = epochs * -(-len(split) // bs)
    if plain_examples_per_s:
        # the student's hand-loop step plus only this overhead: the best lightning_vs_plain can be
        step_ms = 1e3 * bs / plain_examples_per_s
        r["student_plain_ms_per_step"] = step_ms
        r["best_lightning_vs_plain"] = step_ms / (step_ms + r["overhead_ms_per_step"])
    return r


#: direct callees of Lightning's per-batch ``advance`` (file suffix, function or None for any), grouped
PROFILE_GROUPS = [
    ("data fetcher's __next__ (Lightning's wrapper around the batch iterator)", [("builtins.next", None)]),
    ("batch transfer and strategy hooks (on_before/after_batch_transfer, batch_to_device, strategy.on_train_batch_start)",
     [("core/module.py", "_on_before_batch_transfer"), ("trainer/call.py", "_call_strategy_hook")]),
    ("signature inspection of training_step (_build_kwargs)", [("loops/training_epoch_loop.py", "_build_kwargs")]),
    ("hook dispatch (on_train_batch_start/end: module and callbacks)",
     [("trainer/call.py", "_call_callback_hooks"), ("trainer/call.py", "_call_lightning_module_hook")]),
    ("logger connector (per-batch metric bookkeeping)", [("logger_connector/logger_connector.py", None)]),
    ("manual-optimisation loop around training_step", [("loops/optimization/manual.py", "run")]),
]


def _match(key: tuple, pattern: tuple) -> bool:
    filename, _, func = key
    path, name = pattern
    if path == "builtins.next":
        return func == "<built-in method builtins.next>"
    return filename.replace("\\", "/").endswith(path) and (name is None or func == name)


def _cumulative(stats: dict, pattern: tuple) -> float:
    return sum(v[3] for k, v in stats.items() if _match(k, pattern))


def profile_lightning_step(name: str = "mnist", epochs: int = 20) -> dict:
    """Where a bare Lightning ``fit`` spends a step around a constant model, by cProfile: the
    cumulative time of each direct callee of the per-batch ``advance``, grouped (PROFILE_GROUPS),
    with the step itself (``train_on_batch``: forward, loss, backward, optimizer step) and the
    batch iterator's slicing (which the hand loop pays too) split out. Profiled times are
    inflated by cProfile's own cost per call; ``share`` is each group's fraction of the profiled
    per-step time outside the step and the slicing."""
    import cProfile
    import pstats

    split, _, _, bs, lengths = scenario_pair(name)
    c = int(split.y.max()) + 1
    lightning_fit(ClassifierModule(ConstantModel(c)), split, bs, 2, lengths)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    lightning_fit(ClassifierModule(ConstantModel(c)), split, bs, epochs, lengths)
    prof.disable()
    stats = pstats.Stats(prof).stats
    steps = epochs * -(-len(split) // bs)
    advance = next(k for k in stats if _match(k, ("loops/training_epoch_loop.py", "advance")))
    total = stats[advance][3]
    step = _cumulative(stats, ("biaskd/modules/classifier.py", "train_on_batch"))
    training_step = _cumulative(stats, ("biaskd/modules/classifier.py", "training_step"))
    iterator = _cumulative(stats, ("biaskd/data/base.py", "__iter__"))
    groups = {}
    for label, patterns in PROFILE_GROUPS:
        groups[label] = sum(callers[advance][3] for key, (_, _, _, _, callers) in stats.items()
                            if advance in callers and any(_match(key, p) for p in patterns))
    groups["manual-optimisation loop around training_step"] -= training_step
    groups[PROFILE_GROUPS[0][0]] -= iterator  # the slicing itself is the hand loop's cost too
    groups["the loop's own bookkeeping (progress counters, contexts, lr schedulers, ...)"] = (
        total - step - iterator - sum(groups.values()))
    overhead = total - step - iterator
    us = lambda t: 1e6 * t / steps  # noqa: E731
    return {"scenario": name, "steps": steps, "profiled_us_per_step": us(total),
            "step_us": us(step), "batch_iterator_us": us(iterator), "overhead_us": us(overhead),
            "groups": [{"what": k, "us_per_step": us(v), "share": v / overhead} for k, v in
                       sorted(groups.items(), key=lambda kv: -kv[1])]}


def _fmt_profile(p: dict, overhead_ms: float | None) -> str:
    lines = [f"cProfile of a bare `Trainer.fit` around the constant model ({p['scenario']}, {p['steps']} steps): "
             f"{p['profiled_us_per_step']:.0f} µs per profiled step, of which the step itself (`train_on_batch`: "
             f"forward, loss, backward, optimizer step) {p['step_us']:.0f} µs and the batch iterator's slicing (also in the "
             f"hand loop) {p['batch_iterator_us']:.0f} µs; Lightning's loop around them {p['overhead_us']:.0f} µs "
             "(cProfile inflates every Python call; the shares are what to read).", "",
             "| where Lightning's per-step time goes | profiled µs/step | share |"
             + (" ≈ unprofiled ms/step |" if overhead_ms else ""),
             "|---|---|---|" + ("---|" if overhead_ms else "")]
    for g in p["groups"]:
        row = f"| {g['what']} | {g['us_per_step']:.0f} | {g['share']:.0%} |"
        if overhead_ms:
            row += f" {g['share'] * overhead_ms:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def bench_cka(n: int, d: int, repeats: int) -> dict:
    from biaskd.measures import linear_cka, linear_cka_gram

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


def end_to_end(epochs: int = 100, seeds: tuple[int, ...] = (1, 2)) -> dict:
    """Where a v2 MNIST student's wall time goes (``experiment=mnist_v2``, independent MLP,
    ``epochs`` epochs, 21 eval splits, one thread): the process's imports (timed in a fresh
    interpreter), then per run the phases the driver records (``metrics.json``
    ``train.phases_s``). The first run builds the data (20 OOD splits); the next ones, as in a
    sweep's later jobs in one process, reuse it."""
    from hydra import compose, initialize_config_dir

    from biaskd.cli import CONF_DIR
    from biaskd.train import train

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import biaskd.train"], check=True, capture_output=True)
    imports = time.perf_counter() - t
    runs = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for seed in seeds:
            cfg = compose("config", overrides=["experiment=mnist_v2", "distill=none", f"trainer.max_epochs={epochs}",
                                               f"seed={seed}", f"runs_dir={tmp}", "threads=1",
                                               "trainer.enable_progress_bar=false"])
            t = time.perf_counter()
            run = train(cfg)
            total = time.perf_counter() - t
            phases = run.metrics["train"]["phases_s"]
            runs.append({"seed": seed, "total_s": total, "phases_s": phases,
                         "fit_share": phases["fit"] / total,
                         "fit_share_with_imports": phases["fit"] / (total + (imports if not runs else 0.0))})
    return {"epochs": epochs, "imports_s": imports, "runs": runs}


def _fmt_end_to_end(e: dict) -> str:
    order = [k for k in ("data", "teacher", "setup", "fit", "evaluate", "features", "teacher_measures")
             if k in e["runs"][0]["phases_s"]]
    lines = [f"\n## Where a {e['epochs']}-epoch MNIST student's wall time goes\n",
             f"`experiment=mnist_v2 distill=none trainer.max_epochs={e['epochs']} threads=1`; importing the "
             f"training stack takes {e['imports_s']:.1f} s once per process.\n",
             "| run | total (s) | " + " | ".join(order) + " | training loop (fit) share |",
             "|---|---|" + "---|" * len(order) + "---|"]
    for i, r in enumerate(e["runs"]):
        what = "first in its process (builds the data; + imports)" if i == 0 else "next in the same process"
        share = r["fit_share_with_imports"] if i == 0 else r["fit_share"]
        lines.append(f"| {what} | {r['total_s'] + (e['imports_s'] if i == 0 else 0):.1f} | "
                     + " | ".join(f"{r['phases_s'][k]:.1f}" for k in order) + f" | {share:.0%} |")
    return "\n".join(lines) + "\n"


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
               "lightning_vs_plain": "≥ 0.90", "run_trainer_vs_plain": "(reference)",
               "lightning_step_overhead": "(reference)", "cka_fast_vs_naive": "≪ 1, equal to 1e-6"}
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
                detail += (f"; a run's Trainer (callbacks, CSV logger, progress bar) adds "
                           f"{r['run_trainer_overhead_ms_per_step']:.2f} ms/step, with Lightning's stock "
                           f"per-step progress bar {r['stock_bar_overhead_ms_per_step']:.2f} ms/step")
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
    start, load_start = time.perf_counter(), _loadavg()
    benchmarks: dict[str, dict] = {k: {} for k in (
        "kd_cached_vs_student", "kd_teacher_forward_vs_student", "lightning_vs_plain", "run_trainer_vs_plain",
        "lightning_step_overhead", "cka_fast_vs_naive")}
    plan = {scen: SCENARIO_PLAN.get(scen, {args.quick: (repeats, MIN_STEPS[args.quick])})[args.quick]
            for scen in scenarios}
    for scen in scenarios:
        reps, min_steps = plan[scen]
        print(f"[bench] {scen}: student alone, cached KD, teacher-forward KD, hand loop, run Trainer", flush=True)
        for k, v in bench_training(scen, epochs, reps, min_steps).items():
            benchmarks[k][scen] = v
        print(f"[bench] {scen}: the loops' per-step cost around a constant model", flush=True)
        benchmarks["lightning_step_overhead"][scen] = bench_lightning_overhead(
            scen, epochs, reps, min_steps, benchmarks["lightning_vs_plain"][scen]["b_median"])
    profile = None
    if "mnist" in scenarios:
        print("[bench] mnist: profile of Lightning's per-step cost", flush=True)
        profile = profile_lightning_step("mnist")
    e2e = None
    if "mnist" in scenarios:
        print("[bench] mnist: where a 100-epoch student's wall time goes", flush=True)
        e2e = end_to_end()
    print("[bench] CKA", flush=True)
    benchmarks["cka_fast_vs_naive"]["n=10000,d=512"] = bench_cka(10_000, 512, repeats)
    results = {
        "command": "python -m biaskd.bench" + (" --quick" if args.quick else ""),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other processes' load skews ratios (both sides are timed, but not at the same instant)
                    "loadavg_1min_start": load_start, "loadavg_1min_end": _loadavg()},
        "repeats": {**{scen: p[0] for scen, p in plan.items()}, "cka": repeats},
        "min_epochs_per_measurement": epochs, "min_steps_per_measurement": {scen: p[1] for scen, p in plan.items()},
        "benchmarks": benchmarks,
        "lightning_step_profile": profile,
        "end_to_end": e2e,
        "main_job_wall_s": None if args.quick else main_job_wall_time(),
    }
    results["bench_wall_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    table = _fmt(results)
    profile_md = ""
    if profile is not None:
        overhead = benchmarks["lightning_step_overhead"]["mnist"]["overhead_ms_per_step"]
        profile_md = ("\n## Where Lightning's per-step time goes\n\n" + _fmt_profile(profile, overhead)
                      + f"\n\nThe last column shares out the {overhead:.2f} ms/step measured above "
                      "(`lightning_step_overhead`, mnist) by the profiled shares.\n")
    (out / "bench.md").write_text(
        f"# Benchmarks\n\nMade by `{results['command']}` on {results['machine']['cpus']} CPU cores "
        f"(torch {torch.__version__}, {results['machine']['torch_threads']} threads), {results['bench_wall_s']:.0f} s, "
        f"1-minute load average {_fmt_load(results['machine'])}. Each training ratio is the median over "
        f"{_fmt_repeats(results['repeats'])} rounds (after a warm-up; every contender once per round, "
        f"in A B B A order) of a / b within a round; each training measurement covers "
        f"{_fmt_repeats(results['min_steps_per_measurement'])} steps or more (whole epochs).\n\n{table}\n{profile_md}"
        + (_fmt_end_to_end(e2e) if e2e else ""))
    print(table)


if __name__ == "__main__":
    main()

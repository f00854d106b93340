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
   ``lightning_grouped_vs_plain`` and ``run_trainer_grouped_vs_plain``: the same with
   ``STEPS_PER_CALL`` optimizer steps per ``training_step`` (``train.steps_per_call``: the same
   updates, the loop's fixed cost per call paid once per group), and ``lightning_grouped_<k>_vs_plain``
   with each larger ``k`` of ``GROUP_SCAN`` (reference); ``lightning_stacked_vs_plain`` (image
   students): ``STACKED_SEEDS`` seeds trained as one vectorised model in a bare ``fit``, all their
   examples counted, ÷ one seed's hand loop (:mod:`biaskd.bench.stacked`);
5. ``lightning_step_overhead``: what the loops cost per step whatever the model: the same
   loops with a model that is one bias vector (no compute to speak of); the ms/step
   differences, the best ``lightning_vs_plain`` they allow for the scenario's student, and
   what Lightning's stock (every-step) progress bar would add;
6. ``cka_fast_vs_naive``: ``biaskd.pairwise.linear_cka`` time ÷ an n×n Gram version;
7. wall time of the README's main job (full mode only);
8. ``subnormal_kept_vs_flushed``: a fitted student's step with subnormal floats kept ÷ flushed
   (``flush_denormal``; :mod:`biaskd.bench.subnormal`).

A measurement covers at least the steps of ``SCENARIO_PLAN`` (``MIN_STEPS`` for other
scenarios; whole epochs, or a seeded subset of batches), so that one-off
costs of a ``fit`` (the first step's optimizer state, Lightning's first ``self.log``) weigh in
it about as little as in a real run.

Writes ``results/bench.json`` and ``results/bench.md``. This module is the command and the
tables; the measurements are in :mod:`biaskd.bench.loops` (1-5), :mod:`biaskd.bench.step_profile`
(the profile of 5) and :mod:`biaskd.bench.wall` (6, 7 and the end-to-end breakdown).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from biaskd.bench.loops import GROUP_SCAN, REPO, STEPS_PER_CALL, bench_lightning_overhead, bench_training
from biaskd.bench.step_profile import format_profile, profile_lightning_step
from biaskd.bench.subnormal import bench_subnormal_steps, format_subnormal
from biaskd.bench.wall import (bench_cka, end_to_end, epoch_60k, format_end_to_end, format_epoch_60k,
                               main_job_wall_time)

#: fewest optimizer steps in one measurement (quick, full)
MIN_STEPS = {True: 150, False: 300}
#: repeats (quick, full) of the CKA timing and of a scenario not in SCENARIO_PLAN
REPEATS = (3, 5)
#: (repeats, steps per measurement) with and without --quick: MNIST steps take a few ms, so its
#: ratios are the closest calls and many short rounds resist bursts of load best; SVA steps take
#: ~40 ms, so a quick measurement is a seeded subset of 100 batches (see measurement_split)
SCENARIO_PLAN = {"mnist": {True: (15, 150), False: (25, 300)},
                 "sva": {True: (4, 100), False: (5, 300)}}


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
               "lightning_vs_plain": "(reference)", "run_trainer_vs_plain": "(reference)",
               "lightning_grouped_vs_plain": "≥ 0.90", "run_trainer_grouped_vs_plain": "(reference)",
               "lightning_step_overhead": "(reference)", "cka_fast_vs_naive": "≪ 1, equal to 1e-6",
               **{f"lightning_grouped_{k}_vs_plain": "(reference)" for k in GROUP_SCAN},
               "lightning_stacked_vs_plain": "(reference)"}
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
                if "steps_per_call" in r:
                    detail += f", {r['steps_per_call']} optimizer steps per training_step"
                if "stacked_seeds" in r:
                    detail += (f", {r['stacked_seeds']} seeds stacked (examples of all seeds per second; "
                               f"ms per stacked step ÷ seeds)")
            lines.append(f"| {key} | {scen} | {r['ratio']:.3f} | {targets[key]} | {detail} |")
    if results.get("main_job_wall_s") is not None:
        lines.append(f"| main job wall time | mnist | — | ≤ 600 s | {results['main_job_wall_s']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m biaskd.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; skip the main-job wall time")
    ap.add_argument("--scenarios", default="mnist,sva")
    ap.add_argument("--out", default=str(REPO / "results"))
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the training loops and the CKA timing (default 0: all cores; "
                         "the recipes' sweeps run threads=1, two jobs at a time)")
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    threads = torch.get_num_threads()  # the runs timed below set their own (threads=1); restored after them
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
        "lightning_grouped_vs_plain", "run_trainer_grouped_vs_plain",
        *(f"lightning_grouped_{k}_vs_plain" for k in GROUP_SCAN), "lightning_stacked_vs_plain",
        "lightning_step_overhead",
        "cka_fast_vs_naive")}
    plan = {scen: SCENARIO_PLAN.get(scen, {args.quick: (repeats, MIN_STEPS[args.quick])})[args.quick]
            for scen in scenarios}
    for scen in scenarios:
        reps, min_steps = plan[scen]
        print(f"[bench] {scen}: student alone, cached KD, teacher-forward KD, hand loop, run Trainer, "
              f"{STEPS_PER_CALL} steps per call (and {', '.join(map(str, GROUP_SCAN))})", flush=True)
        for k, v in bench_training(scen, epochs, reps, min_steps).items():
            benchmarks[k][scen] = v
        print(f"[bench] {scen}: the loops' per-step cost around a constant model", flush=True)
        benchmarks["lightning_step_overhead"][scen] = bench_lightning_overhead(
            scen, epochs, reps, min_steps, benchmarks["lightning_vs_plain"][scen]["b_median"])
    profile = None
    if "mnist" in scenarios:
        print("[bench] mnist: profile of Lightning's per-step cost", flush=True)
        profile = profile_lightning_step("mnist")
    e2e = e60k = e2e_60k = None
    if "mnist" in scenarios:
        print("[bench] mnist: where a 100-epoch student's wall time goes", flush=True)
        e2e = end_to_end()
        print("[bench] mnist: one epoch on the 60k digits, by steps per call", flush=True)
        e60k = epoch_60k()
        if e60k is not None and not args.quick:
            print("[bench] mnist: where a lone 100-epoch protocol-v3 student's wall time goes", flush=True)
            e2e_60k = end_to_end(seeds=(1,), experiment="mnist_v3")
    torch.set_num_threads(threads)
    print("[bench] a fitted student's step, subnormals kept and flushed", flush=True)
    subnormal = bench_subnormal_steps(rounds=3 if args.quick else 5)
    print("[bench] CKA", flush=True)
    benchmarks["cka_fast_vs_naive"]["n=10000,d=512"] = bench_cka(10_000, 512, repeats)
    results = {
        "command": "python -m biaskd.bench" + (" --quick" if args.quick else "")
                   + (f" --scenarios {args.scenarios}" if args.scenarios != "mnist,sva" else "")
                   + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads,
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other processes' load skews ratios (both sides are timed, but not at the same instant)
                    "loadavg_1min_start": load_start, "loadavg_1min_end": _loadavg()},
        "repeats": {**{scen: p[0] for scen, p in plan.items()}, "cka": repeats},
        "min_epochs_per_measurement": epochs, "min_steps_per_measurement": {scen: p[1] for scen, p in plan.items()},
        "benchmarks": benchmarks,
        "lightning_step_profile": profile,
        "end_to_end": e2e,
        "end_to_end_60k": e2e_60k,
        "epoch_60k": e60k,
        "subnormal_kept_vs_flushed": subnormal,
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
        profile_md = ("\n## Where Lightning's per-step time goes\n\n" + format_profile(profile, overhead)
                      + f"\n\nThe last column shares out the {overhead:.2f} ms/step measured above "
                      "(`lightning_step_overhead`, mnist) by the profiled shares.\n")
    (out / "bench.md").write_text(
        f"# Benchmarks\n\nMade by `{results['command']}` on {results['machine']['cpus']} CPU cores "
        f"(torch {torch.__version__}; {results['machine']['torch_threads']} torch thread(s) in the training loops and the "
        f"CKA timing, one in the runs timed below), {results['bench_wall_s']:.0f} s, "
        f"1-minute load average {_fmt_load(results['machine'])}. Each training ratio is the median over "
        f"{_fmt_repeats(results['repeats'])} rounds (after a warm-up; every contender once per round, "
        f"in A B B A order) of a / b within a round; each training measurement covers "
        f"{_fmt_repeats(results['min_steps_per_measurement'])} steps or more (whole epochs).\n\n{table}\n{profile_md}"
        + (format_end_to_end(e2e) if e2e else "") + (format_end_to_end(e2e_60k) if e2e_60k else "")
        + (format_epoch_60k(e60k) if e60k else "")
        + (format_subnormal(subnormal) if subnormal else ""))
    print(table)


if __name__ == "__main__":
    main()

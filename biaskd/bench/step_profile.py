"""Where a bare Lightning ``fit`` spends a training step, by cProfile (``python -m biaskd.bench``
with the MNIST scenario): the cumulative time of each direct callee of Lightning's per-batch
``advance``, grouped (``PROFILE_GROUPS``), around a model with no compute.
"""
from __future__ import annotations

from biaskd.bench.loops import ConstantModel, lightning_fit, scenario_pair
from biaskd.modules.classifier import ClassifierModule


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


def format_profile(p: dict, overhead_ms: float | None) -> str:
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

"""What subnormal floats cost a fitted student's training step, and what ``flush_denormal`` saves.

Once an MLP fits its training digits (loss 0 to print precision), its gradients are nearly zero
and Adam's moment estimates decay geometrically through float32's subnormal range (below
1.18e-38), where x86 arithmetic takes a slow path. A 400-epoch independent student of protocol
v3 had a third of its first layer's moments subnormal, and trained at about half the speed of
the distilled student beside it. This bench recreates that state without the 400 epochs: protocol
v3's student (``MLP`` 256-256) whose logits put a margin no float32 softmax resolves on the label
(loss 0, as a fitted student's), Adam moments with ``SUBNORMAL_SHARE`` of their entries subnormal, and times full
training steps (forward, backward, Adam) with subnormals kept and flushed (A B B A, one thread).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from biaskd.record import reproduce

#: share of Adam's moment entries that are subnormal (a 400-epoch independent v3 student's first
#: layer: 33 %; its second: 11 %)
SUBNORMAL_SHARE = 1 / 3


def _fitted_student(seed: int = 0, batch: int = 64):
    from biaskd.models.vision import MLP

    g = torch.Generator().manual_seed(seed)
    model = MLP(num_classes=10, in_shape=(1, 28, 28), hidden=(256, 256))
    x = torch.rand(batch, 1, 28, 28, generator=g)
    y = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        model.head.bias[0] = 1e3  # a margin of a thousand on the label: softmax saturates, loss and gradients 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the moment tensors; zero gradients leave the weights as they are
    with torch.no_grad():
        for state in opt.state.values():
            state["step"].fill_(100_000)  # long past Adam's bias-correction warm-up
            for key in ("exp_avg", "exp_avg_sq"):
                m = state[key]
                tiny = torch.rand(m.shape, generator=g) < SUBNORMAL_SHARE
                sub = torch.empty(m.shape).uniform_(1e-44, 1e-38, generator=g)
                normal = torch.empty(m.shape).uniform_(1e-12, 1e-8, generator=g)
                m.copy_(torch.where(tiny, sub, normal))
    return model, opt, x, y


def _steps(flush: bool, steps: int) -> float:
    reproduce.flush_denormal(False)  # the moments are written as subnormals, whatever the process had set
    model, opt, x, y = _fitted_student()
    reproduce.flush_denormal(flush)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1e3


def bench_subnormal_steps(rounds: int = 5, steps: int = 50) -> dict:
    """ms per training step with subnormals kept and flushed; ``ratio``: kept ÷ flushed, the median
    of the within-round ratios (rounds in A B B A order). Returns None where the CPU cannot flush."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with reproduce.subnormals_flushed(True) as can_flush:  # the process's own mode is back afterwards
            if not can_flush:
                return None
            _steps(False, 5), _steps(True, 5)  # warm-up
            kept, flushed, ratios = [], [], []
            for r in range(rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                t = {flush: _steps(flush, steps) for flush in order}
                kept.append(t[False]); flushed.append(t[True]); ratios.append(t[False] / t[True])
    finally:
        torch.set_num_threads(threads)
    return {"ratio": statistics.median(ratios), "kept_ms": statistics.median(kept),
            "flushed_ms": statistics.median(flushed), "rounds": rounds, "steps": steps,
            "subnormal_share": SUBNORMAL_SHARE}


def format_subnormal(r: dict) -> str:
    return ("\n## A fitted student's step with subnormal floats kept and flushed (`flush_denormal`)\n\n"
            f"Protocol v3's MLP at loss 0, Adam moments {r['subnormal_share']:.0%} subnormal, one thread, "
            f"{r['rounds']} rounds of {r['steps']} steps (A B B A): {r['kept_ms']:.2f} ms per step with "
            f"subnormals kept, {r['flushed_ms']:.2f} ms flushed — kept ÷ flushed {r['ratio']:.2f}× "
            "(median of the within-round ratios).\n")

"""Training throughput, side by side: the loops and contenders :mod:`biaskd.bench` times.

A scenario's student trained by Lightning's ``fit`` (bare, or with the Trainer a run uses), by
offline KD with cached teacher logits or a teacher forward per step, and by a minimal
hand-written loop; the same loops around a model with no compute (:class:`ConstantModel`), for
what the loop itself costs. Contenders run in rounds (:func:`round_robin`), and the claims are
ratios within a round (:func:`pair_ratio`).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time

import lightning as L
import torch

from biaskd import PROJECT_ROOT
from biaskd.bench.stacked import StackedBatches, StackedSeeds
from biaskd.data.base import Split, StepGroups, TensorBatches
from biaskd.losses import cross_entropy
from biaskd.modules.classifier import ClassifierModule
from biaskd.modules.distill import CachedOutputs, DistillModule, FrozenTeacher
from biaskd.objectives.kd import SoftTargets

REPO = PROJECT_ROOT

#: steps of a training contender's warm-up run
WARMUP_STEPS = 20
#: optimizer steps per training_step of the grouped contenders (``train.steps_per_call``; what
#: protocol v3's recipes use)
STEPS_PER_CALL = 8
#: more steps per call, for reference: how far larger groups take the bare ``fit``
GROUP_SCAN = (16, 32)
#: seeds trained as one vectorised model by the stacked contender (:mod:`biaskd.bench.stacked`)
STACKED_SEEDS = 4


class _Data(L.LightningDataModule):
    def __init__(self, split: Split, batch_size: int, lengths=None, steps_per_call: int = 1):
        super().__init__()
        self.batches = TensorBatches(split, batch_size, seed=0, lengths=lengths)
        if steps_per_call > 1:
            self.batches = StepGroups(self.batches, steps_per_call)

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


def lightning_fit(module: L.LightningModule, split: Split, batch_size: int, epochs: int, lengths=None,
                  steps_per_call: int = 1) -> float:
    """Examples per second of ``Trainer.fit``'s training loop (``steps_per_call`` optimizer steps
    per training_step)."""
    timer = _LoopTimer()
    trainer = _trainer(epochs)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=_Data(split, batch_size, lengths, steps_per_call))
    return len(split) * epochs / timer.seconds


class _StackedData(L.LightningDataModule):
    def __init__(self, split: Split, batch_size: int, seeds):
        super().__init__()
        self.batches = StackedBatches(split, batch_size, seeds)

    def train_dataloader(self):
        return self.batches


def stacked_fit(make_model, split: Split, batch_size: int, epochs: int, k: int = STACKED_SEEDS) -> float:
    """Examples per second, all ``k`` copies counted, of ``Trainer.fit``'s training loop on ``k``
    seeds of ``make_model()`` trained as one vectorised model (:class:`StackedSeeds`)."""
    timer = _LoopTimer()
    trainer = _trainer(epochs)
    trainer.callbacks.append(timer)
    trainer.fit(StackedSeeds([make_model() for _ in range(k)]), datamodule=_StackedData(split, batch_size, range(k)))
    return k * len(split) * epochs / timer.seconds


def run_trainer_fit(module: L.LightningModule, split: Split, batch_size: int, epochs: int, lengths=None,
                    stock_progress_bar: bool = False, steps_per_call: int = 1) -> float:
    """Examples per second of ``Trainer.fit`` as a run trains: the Trainer of
    :func:`biaskd.run.train.make_trainer` with ``conf/trainer/cpu.yaml`` (deterministic algorithms,
    progress bar), a CSV logger, the epoch checkpoint, the finite-loss guard and the
    training-path recorder (no steps recorded mid-run), and the configured callbacks
    (``conf/callbacks/default.yaml``: the progress bar). The bar draws to /dev/null.
    ``stock_progress_bar``: Lightning's bar with its default settings (redrawn every step) in
    place of the configured one. ``steps_per_call``: as ``train.steps_per_call``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress import ProgressBar
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from biaskd.record.artifacts import RunDir
    from biaskd.run.train import configured_callbacks, make_trainer

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        callbacks = configured_callbacks(compose("config"))
    GlobalHydra.instance().clear()

    tcfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "trainer" / "cpu.yaml"))
    tcfg["max_epochs"] = epochs
    timer = _LoopTimer()
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull, \
            contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        run = RunDir(tmp)
        trainer = make_trainer(tcfg, run, [CSVLogger(tmp, name="logs", version="")], split.subset(range(64)), [],
                               callbacks=callbacks, steps_per_call=steps_per_call)
        trainer.callbacks.insert(0, timer)  # its on_train_end first: the final path record is not a step cost
        if stock_progress_bar:
            i = next(i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, ProgressBar))
            trainer.callbacks[i] = TQDMProgressBar()
        trainer.fit(module, datamodule=_Data(split, batch_size, lengths, steps_per_call))
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
        from biaskd.config import model_from_conf
        from biaskd.data.sva import SVAData

        data = SVAData(batch_size=64, seed=0)
        data.setup()
        v = data.vocab_size
        teacher = model_from_conf("lstm", vocab_size=v, num_classes=2)
        student = lambda: model_from_conf("transformer", vocab_size=v, num_classes=2)  # noqa: E731
        return data.train, student, teacher, 64, data.lengths(data.train)
    raise ValueError(name)


def bench_training(name: str, epochs: int, repeats: int, min_steps: int = 0) -> dict:
    """The scenario's student trained nine ways (ten for images: ``STACKED_SEEDS`` seeds as one
    vectorised model), in rounds: Lightning ``fit`` with a teacher
    forward per step, with cached KD, alone; the hand loop; the run's own Trainer; Lightning's
    ``fit`` and the run's Trainer with ``STEPS_PER_CALL`` optimizer steps per training_step, and
    ``fit`` with each of ``GROUP_SCAN``'s."""
    split, make_student, teacher, bs, lengths = scenario_pair(name)
    split, lengths = measurement_split(split, lengths, bs, epochs, min_steps)
    epochs = epochs_for(split, bs, epochs, min_steps)
    teacher.eval()
    with torch.no_grad():
        cached = torch.cat([teacher(split.x[i:i + 1024]) for i in range(0, len(split), 1024)])

    def contenders(sp: Split, ep: int, lens) -> dict:
        fit = lambda module: lightning_fit(module, sp, bs, ep, lens)  # noqa: E731
        return {  # the ratios' pairs are neighbours in this order
            "kd_forward": lambda: fit(DistillModule(make_student(), SoftTargets(2.0), FrozenTeacher(teacher))),
            "kd_cached": lambda: fit(DistillModule(make_student(), SoftTargets(2.0), CachedOutputs(cached))),
            "student": lambda: fit(ClassifierModule(make_student())),
            "plain": lambda: plain_loop(make_student(), sp, bs, ep, lens),
            "run_trainer": lambda: run_trainer_fit(ClassifierModule(make_student()), sp, bs, ep, lens),
            "run_trainer_grouped": lambda: run_trainer_fit(ClassifierModule(make_student()), sp, bs, ep, lens,
                                                           steps_per_call=STEPS_PER_CALL),
            "student_grouped": lambda: lightning_fit(ClassifierModule(make_student()), sp, bs, ep, lens,
                                                     steps_per_call=STEPS_PER_CALL),
            **{f"student_grouped_{k}": (lambda k=k: lightning_fit(ClassifierModule(make_student()), sp, bs, ep, lens,
                                                                  steps_per_call=k)) for k in GROUP_SCAN},
            # seeds stacked: batches of one width only (sequence batches are trimmed per seed)
            **({"stacked": lambda: stacked_fit(make_student, sp, bs, ep)} if lens is None else {}),
        }

    n = min(len(split), bs * WARMUP_STEPS)  # the first rows: cached-KD indices stay valid
    warm = contenders(split.subset(torch.arange(n)), 1, None if lengths is None else lengths[:n])
    t = round_robin(contenders(split, epochs, lengths), repeats, warmup=warm)
    info = {"batch_size": bs, "steps": epochs * -(-len(split) // bs)}
    grouped = info | {"steps_per_call": STEPS_PER_CALL}
    return {
        "kd_cached_vs_student": pair_ratio(t["kd_cached"], t["student"]) | info,
        "kd_teacher_forward_vs_student": pair_ratio(t["kd_forward"], t["student"]) | info,
        "lightning_vs_plain": pair_ratio(t["student"], t["plain"]) | info,
        "run_trainer_vs_plain": pair_ratio(t["run_trainer"], t["plain"]) | info,
        "lightning_grouped_vs_plain": pair_ratio(t["student_grouped"], t["plain"]) | grouped,
        "run_trainer_grouped_vs_plain": pair_ratio(t["run_trainer_grouped"], t["plain"]) | grouped,
        **{f"lightning_grouped_{k}_vs_plain": pair_ratio(t[f"student_grouped_{k}"], t["plain"])
           | info | {"steps_per_call": k} for k in GROUP_SCAN},
        **({"lightning_stacked_vs_plain": pair_ratio(t["stacked"], t["plain"]) | info | {"stacked_seeds": STACKED_SEEDS}}
           if "stacked" in t else {}),
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

"""Transfer sets: disjoint from every eval split, reproducible from their seed, labelled as
configured, cached with the teacher, and never seen by the teacher."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from biaskd import config as config_mod
from biaskd.data import transfer as T
from biaskd.data.base import PAD_ID, Split, concat_splits, content_hashes
from biaskd.data.build import build_data
from biaskd.data.ood import random_pose
from biaskd.data.sva import POOL_ID_STRIDE, SVAData, read_numpred
from biaskd.errors import ConfigError
from biaskd.losses import UNLABELLED
from biaskd.record.artifacts import load_npz
from biaskd.run.train import train

LINZEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "linzen"


def _eval_hashes(data) -> set[str]:
    return {h for s in [data.valid, *data.evals.values()] for h in content_hashes(s).tolist()}


# -- building blocks ------------------------------------------------------------------------------
def test_random_pose_shifts_and_scales_as_recorded():
    img = np.zeros((1, 9, 9))
    img[0, 4, 4] = 1.0  # one pixel at the centre
    out, p = random_pose(img, 200, seed=3, max_shift=2, scales=(1.0,))
    assert set(p["scale"]) == {1.0} and p["source"].max() == 0
    for k in range(200):  # scale 1 is the identity, so the pixel lands exactly at centre + shift
        r, c = np.argwhere(out[k] == 1.0)[0]
        assert (r - 4, c - 4) == (p["shift_y"][k], p["shift_x"][k])
    assert set(p["shift_x"]) == {-2, -1, 0, 1, 2}
    again, q = random_pose(img, 200, seed=3, max_shift=2, scales=(1.0,))
    assert np.array_equal(out, again) and all(np.array_equal(p[k], q[k]) for k in p)
    _, other = random_pose(img, 200, seed=4, max_shift=2, scales=(1.0,))
    assert not np.array_equal(p["shift_x"], other["shift_x"])


def test_random_pose_scale_shrinks_ink_about_the_centre():
    img = np.zeros((1, 28, 28))
    img[0, 4:24, 4:24] = 1.0  # a 20x20 square centred on (13.5, 13.5)
    out, p = random_pose(img, 1, seed=0, max_shift=0, scales=(0.5,))
    ink = out[0] > 0.5
    rows, cols = np.nonzero(ink)
    assert (rows.max() - rows.min() + 1) == 10 and (cols.max() - cols.min() + 1) == 10
    assert np.isclose(rows.mean(), 13.5) and np.isclose(cols.mean(), 13.5)


def test_content_hashes_ignore_padding_labels_and_ids():
    x = torch.tensor([[5, 6, 0, 0], [5, 6, 7, 0], [5, 6, 0, 0]])
    a = Split("a", x, torch.tensor([0, 1, 1]), torch.tensor([10, 11, 12]))
    h = content_hashes(a)
    assert h[0] == h[2] and h[0] != h[1]
    b = Split("b", x[:1, :2], torch.tensor([1]), torch.tensor([99]))
    assert content_hashes(b)[0] == h[0]


def test_concat_splits_pads_tokens_and_keeps_common_meta():
    a = Split("a", torch.tensor([[1, 2]]), torch.tensor([0]), torch.tensor([0]), {"k": np.array([1]), "only_a": np.array([2])})
    b = Split("b", torch.tensor([[3, 4, 5]]), torch.tensor([1]), torch.tensor([1]), {"k": np.array([7])})
    c = concat_splits("c", [a, b])
    assert c.x.tolist() == [[1, 2, PAD_ID], [3, 4, 5]] and list(c.meta) == ["k"] and c.meta["k"].tolist() == [1, 7]


@pytest.mark.parametrize("node, key", [
    ({"source": "nope"}, "transfer.source"),
    ({"source": "augment", "size": 10, "max_shfit": 2}, "transfer.max_shfit"),
    ({"source": "heldout", "size": -1}, "transfer.size"),
    ({"source": "augment"}, "transfer.size"),
    ({"source": "heldout", "labels": "silver"}, "transfer.labels"),
    ({"source": "heldout", "mix_with_train": "yes"}, "transfer.mix_with_train"),
    ({"source": "heldout", "size": 0, "mix_with_train": False}, "transfer.size"),
])
def test_bad_transfer_config_names_the_key(node, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        T.TransferSpec.from_config(node)


def test_fit_split_labels_and_mixing():
    train_split = Split("train", torch.zeros(3, 2), torch.tensor([0, 1, 0]), torch.arange(3))
    extra = Split("transfer", torch.ones(2, 2), torch.tensor([1, 1]), torch.tensor([7, 8]))
    spec = T.TransferSpec("augment", 2)
    distilled = T.fit_split(train_split, extra, spec, distilled=True)
    assert distilled.y.tolist() == [0, 1, 0, UNLABELLED, UNLABELLED]
    control = T.fit_split(train_split, extra, spec, distilled=False)
    assert control.y.tolist() == [0, 1, 0, 1, 1]
    gold = T.fit_split(train_split, extra, T.TransferSpec("augment", 2, labels="gold"), distilled=True)
    assert gold.y.tolist() == [0, 1, 0, 1, 1]
    only = T.fit_split(train_split, extra, T.TransferSpec("augment", 2, mix_with_train=False), distilled=True)
    assert len(only) == 2 and only.ids.tolist() == [7, 8]
    assert T.fit_split(train_split, None, T.TransferSpec(), distilled=True) is train_split


# -- config ---------------------------------------------------------------------------------------
def test_independent_run_cannot_use_teacher_only_labels(compose_tiny):
    cfg = compose_tiny("distill=none", "transfer=augment", "transfer.labels=teacher")
    with pytest.raises(ConfigError, match="transfer.labels"):
        config_mod.validate(cfg)


def test_default_transfer_keeps_run_hashes_and_size_zero_is_train(compose_tiny):
    cfg = compose_tiny("distill=cross")
    without = OmegaConf.create(OmegaConf.to_container(cfg))
    del without["transfer"]
    assert config_mod.run_hash(cfg, "fp") == config_mod.run_hash(without, "fp")
    zero = compose_tiny("distill=cross", "transfer=augment", "transfer.size=0")
    assert config_mod.run_hash(zero, "fp") == config_mod.run_hash(cfg, "fp")
    some = compose_tiny("distill=cross", "transfer=augment", "transfer.size=10")
    assert config_mod.run_hash(some, "fp") != config_mod.run_hash(cfg, "fp")
    teacher = config_mod.teacher_config(some)
    assert T.spec_of(teacher).is_train  # teachers learn from the labelled training set only


# -- end to end on the toy image task ---------------------------------------------------------------
def test_distilled_student_on_augmented_transfer_set(compose_tiny):
    cfg = compose_tiny("distill=cross", "transfer=augment", "transfer.size=200", "transfer.seed=5")
    run = train(cfg)
    meta = json.loads((run / "meta.json").read_text())
    data = build_data(cfg)
    assert meta["transfer"]["n"] == 200 and meta["transfer"]["n_fit"] == len(data.train) + 200
    assert meta["transfer"]["gold_labels"] is False and "tr-augment-200" in run.path.name
    recorded = load_npz(run / "transfer.npz")
    # never an eval input, by content hash
    assert not set(recorded["content_hash"].tolist()) & _eval_hashes(data)
    # the recorded set reproduces from its seed; another seed draws another set
    rebuilt = T.build(T.TransferSpec.from_config({k: v for k, v in meta["transfer"].items()
                                                   if k not in ("n", "n_fit", "gold_labels")}), data)
    assert np.array_equal(rebuilt.ids.numpy(), recorded["ids"])
    assert np.array_equal(content_hashes(rebuilt), recorded["content_hash"])
    other = T.build(T.TransferSpec("augment", 200, seed=6), data)
    assert not np.array_equal(content_hashes(other), recorded["content_hash"])
    # the teacher never saw the transfer inputs, and its outputs on them are cached in its dir
    teacher = run.path.parent.parent / "teachers" / Path(meta["teacher_run"]).name
    assert json.loads((teacher / "meta.json").read_text())["transfer"]["n"] == 0
    fit_cache = sorted((teacher / "teacher_cache").glob("fit-*.npz"))
    assert len(fit_cache) == 1 and len(load_npz(fit_cache[0])["logits"]) == meta["transfer"]["n_fit"]
    # a second student on the same transfer set reuses the cached outputs
    stamp = fit_cache[0].stat().st_mtime_ns
    train(compose_tiny("distill=cross", "transfer=augment", "transfer.size=200", "transfer.seed=5", "seed=2",
                       "teacher.seed_offset=99"))
    assert fit_cache[0].stat().st_mtime_ns == stamp


def test_control_and_transfer_only_runs(compose_tiny):
    control = train(compose_tiny("distill=none", "transfer=augment", "transfer.size=100"))
    assert json.loads((control / "meta.json").read_text())["transfer"]["gold_labels"] is True
    only = train(compose_tiny("distill=self", "transfer=augment", "transfer.size=100", "transfer.mix_with_train=false"))
    meta = json.loads((only / "meta.json").read_text())
    assert meta["transfer"]["n_fit"] == 100 and only.path.name.count("-only") == 1
    assert json.loads((only / "metrics.json").read_text())["train"]["steps"] == 2 * -(-100 // 64)


def test_unavailable_source_is_a_config_error_before_any_training(compose_tiny, tmp_path):
    with pytest.raises(ConfigError, match="transfer.source"):
        train(compose_tiny("distill=cross", "transfer=heldout", "transfer.size=10"))
    assert not list((tmp_path / "runs").glob("*/*/COMPLETE"))  # not even the teacher was trained


# -- language ---------------------------------------------------------------------------------------
def test_grammar_transfer_sentences_are_new_and_of_the_asked_depth():
    data = SVAData(source="grammar", grammar={"n_train": 300, "n_valid": 50, "n_test": 50, "n_deep": 50,
                                              "n_attractors": 30, "train_max_depth": 2, "deep_max_depth": 4})
    data.setup()
    spec = T.TransferSpec.from_config({"source": "grammar", "size": 150, "min_depth": 3, "max_depth": 3})
    split = T.build(spec, data)
    assert len(split) == 150 and set(split.meta["depth"].tolist()) == {3}
    assert not set(split.meta["content_hash"].tolist()) & _eval_hashes(data)
    assert np.array_equal(T.build(spec, data).x, split.x)


@pytest.mark.skipif(not (LINZEN / "numpred.test.1").exists(), reason="needs ../shared/data/linzen")
def test_linzen_heldout_pool_is_disjoint_recorded_and_reproducible():
    kw = dict(source="linzen", data_dir=LINZEN, transfer_pool={"files": [1, 2], "fraction": 0.5})
    data = SVAData(**kw)
    data.setup()
    lines = {k: read_numpred(LINZEN / f"numpred.test.{k}") for k in (1, 2)}
    # every line of numpred.test.1/.2 is either evaluated or in the pool, never both
    for k in (1, 2):
        in_pool = (data.pool_ids // POOL_ID_STRIDE == k).sum()
        assert in_pool + len(data.evals[f"attractors_{k}"]) == len(lines[k])
        assert 0.4 < in_pool / len(lines[k]) < 0.6
    spec = T.TransferSpec.from_config({"source": "heldout", "size": 5000, "seed": 1})
    split = T.build(spec, data)
    assert len(split) == 5000 and not set(split.meta["content_hash"].tolist()) & _eval_hashes(data)
    # ids name file and line: the example is that line
    for i in range(0, 5000, 499):
        k, line = divmod(int(split.ids[i]), POOL_ID_STRIDE)
        ex = lines[k][line]
        assert data.vocab.decode(split.x[i].tolist()) == [t if t in data.vocab else "<unk>" for t in ex.tokens]
        assert int(split.y[i]) == ex.label and split.meta["attractors"][i] == k
    # a fresh data module with the same seeds gives the same pool, eval splits and draw
    again = SVAData(**kw)
    again.setup()
    assert np.array_equal(T.build(spec, again).ids, split.ids)
    assert np.array_equal(again.evals["attractors_1"].ids, data.evals["attractors_1"].ids)
    assert not np.array_equal(T.build(T.TransferSpec("heldout", 5000, seed=2), data).ids, split.ids)
    everything = T.build(T.TransferSpec("heldout"), data)
    assert len(everything) > 0.97 * len(data.pool)  # only inputs equal to an eval input are dropped


# -- analysis ---------------------------------------------------------------------------------------
def test_transfer_sweep_report_from_real_tiny_runs(compose_tiny, tmp_path):
    from analysis import transfer_sets

    runs = {}
    for seed in (1, 2):
        for distill in ("none", "cross"):
            for size in (0, 100):
                runs[distill, size, seed] = train(compose_tiny(f"distill={distill}", "transfer=augment",
                                                               f"transfer.size={size}", f"seed={seed}"))
    path = transfer_sets.write([tmp_path / "runs" / "default"], tmp_path / "out")
    long = pd.read_csv(path.parent / "transfer_sets.csv")
    acc = {k: json.loads((r / "metrics.json").read_text())["splits"]["shifted"]["accuracy"] for k, r in runs.items()}
    # the headline (mean OOD accuracy = the toy task's one OOD split) is the mean over seeds
    cell = long[(long["condition"] == "distilled from cnn_small") & (long["transfer_n"] == 100)
                & (long["split"] == "ood_mean")]
    assert cell["mean"].item() == pytest.approx((acc["cross", 100, 1] + acc["cross", 100, 2]) / 2)
    assert cell["n"].item() == 2
    paired = pd.read_csv(path.parent / "transfer_sets_paired.csv")
    row = paired[(paired["transfer_n"] == 100) & (paired["split"] == "ood_mean")
                 & (paired["versus"] == transfer_sets.CONTROL)]
    expected = np.mean([acc["cross", 100, s] - acc["none", 100, s] for s in (1, 2)])  # vs the control
    assert row["mean_diff"].item() == pytest.approx(expected)
    assert (path.parent / "transfer_sets.png").stat().st_size > 0
    assert "N=100" in path.read_text()


def test_language_classification_and_lm_students_on_grammar_transfer_sets(compose_tiny):
    from test_lm import TINY_LM

    grammar = TINY_LM[:9]  # the tiny grammar task, without the LM models
    cls = train(compose_tiny(*grammar, "task.setup=classification", "model=lstm", "model.d_model=16",
                             "model@teacher.model=lstm", "teacher.model.d_model=24", "distill=cross",
                             "transfer=grammar", "transfer.size=80", "transfer.max_depth=3"))
    meta = json.loads((cls / "meta.json").read_text())
    assert meta["transfer"]["n"] == 80 and meta["transfer"]["n_fit"] == 240 + 80
    assert set(load_npz(cls / "transfer.npz")["depth"].tolist()) <= {0, 1, 2, 3}
    lm = train(compose_tiny(*TINY_LM, "distill=cross", "transfer=grammar", "transfer.size=80"))
    assert json.loads((lm / "meta.json").read_text())["transfer"]["n_fit"] == 240 + 80
    assert (lm / "COMPLETE").exists()

"""Distillation objectives (biaskd.objectives): values worked out by hand, the identities they
should satisfy, the learned hint regressor, cached vs forward teacher outputs, and small grids
over objectives that write complete run dirs (toy images and subject-verb agreement)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from biaskd import config as config_mod
from biaskd.config import model_from_conf
from biaskd.data.build import build_data
from biaskd.errors import ConfigError
from biaskd.models.vision import CNN, MLP
from biaskd.modules.distill import CachedOutputs, DistillModule, FrozenTeacher
from biaskd.objectives import OBJECTIVES, Outputs, build_objective, check_config
from biaskd.objectives.hints import Hints
from biaskd.objectives.kd import SoftTargets
from biaskd.objectives.logits_mse import LogitsMSE
from biaskd.objectives.relation import Relation
from biaskd.record.artifacts import RunDir
from biaskd.run.teacher import teacher_cache
from biaskd.run.train import train

RUN_FILES = ["COMPLETE", "meta.json", "config.yaml", "metrics.json", "model.pt", "outputs/test.npz",
             "features/final.npz", "features/step_000000000.npz", "checkpoints/last.ckpt"]


def out(logits=None, features=None):
    as_t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return Outputs(as_t(logits), as_t(features))


# -- hand-computed values -----------------------------------------------------------------------
def test_kd_hand_computed_and_is_kd_loss():
    # teacher p = (3/4, 1/4), student q = (1/2, 1/2) at T = 1: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    s, t = out([[0.0, 0.0]]), out([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    kd = SoftTargets(temperature=1.0)
    assert kd(s, t, None, alpha=1.0).item() == pytest.approx(kl, abs=1e-6)
    y = torch.tensor([0])
    assert kd(s, t, y, alpha=0.5).item() == pytest.approx(0.5 * kl + 0.5 * math.log(2.0), abs=1e-6)
    # T = 2 scales the logits by 1/2 and the term by T^2 = 4
    s2, t2 = out([[0.0, 0.0]]), out([[2 * math.log(3.0), 0.0]])
    assert SoftTargets(2.0)(s2, t2, None, 1.0).item() == pytest.approx(4 * kl, abs=1e-5)
    assert SoftTargets(2.0, t_squared=False)(s2, t2, None, 1.0).item() == pytest.approx(kl, abs=1e-6)


def test_logits_mse_hand_computed():
    s, t = out([[1.0, 2.0], [0.0, 0.0]]), out([[0.0, 0.0], [1.0, 0.0]])
    # squared differences 1, 4, 1, 0: mean over examples and classes = 6 / 4
    assert LogitsMSE()(s, t, None, 1.0).item() == pytest.approx(1.5)
    # CE(y=[1, 0]): log(1 + e^-1) and log 2
    ce = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    y = torch.tensor([1, 0])
    assert LogitsMSE()(s, t, y, 0.5).item() == pytest.approx(0.5 * 1.5 + 0.5 * ce, abs=1e-6)
    assert LogitsMSE()(s, t, y, 0.0).item() == pytest.approx(ce, abs=1e-6)


def test_logits_mse_is_twice_the_high_temperature_limit_of_kd():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    zs, zt = zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True)
    kd = SoftTargets(temperature=200.0).term(Outputs(zs), Outputs(zt))
    assert kd.item() == pytest.approx(0.5 * LogitsMSE().term(Outputs(zs), Outputs(zt)).item(), rel=1e-2)


def test_hints_hand_computed():
    hints = Hints(student_dim=2, teacher_dim=3)
    with torch.no_grad():
        hints.regressor.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        hints.regressor.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    # W f_s + c = (1, 0, 1); f_t = (2, 1, 0): squared errors 1, 1, 1, mean over d_t = 1
    s = out([[0.0, 0.0]], [[1.0, 0.0]])
    t = out([[0.0, 0.0]], [[2.0, 1.0, 0.0]])
    assert hints(s, t, None, 1.0).item() == pytest.approx(1.0)
    y = torch.tensor([0])
    assert hints(s, t, y, 0.25).item() == pytest.approx(0.25 * 1.0 + 0.75 * math.log(2.0), abs=1e-6)


def _rkd_by_hand():
    # pairs (0,1), (0,2), (1,2); student distances 1, 1, sqrt2; teacher 1, 3, 2
    ds = [1.0, 1.0, math.sqrt(2)]
    dt = [1.0, 3.0, 2.0]
    ps = [d / (sum(ds) / 3) for d in ds]
    pt = [d / (sum(dt) / 3) for d in dt]
    huber = [0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(ps, pt)]
    return sum(huber) / 3


@pytest.mark.parametrize("kind, student, teacher, expected", [
    # S_s = I, S_t = all ones: every row has cosine 1/sqrt2
    ("rsa", [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0]], 1 - 1 / math.sqrt(2)),
    ("rsa_mse", [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0]], 0.5),
    ("rkd", [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0], [1.0], [3.0]], _rkd_by_hand()),
])
def test_relation_hand_computed(kind, student, teacher, expected):
    n = len(student)
    s, t = out([[0.0]] * n, student), out([[0.0]] * n, teacher)
    assert Relation(kind)(s, t, None, 1.0).item() == pytest.approx(expected, abs=1e-6)


# -- identities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [SoftTargets(3.0), LogitsMSE(), Relation("rsa"), Relation("rsa_mse"),
                                       Relation("rkd")], ids=lambda o: f"{o.name}-{getattr(o, 'kind', '')}")
def test_zero_when_student_equals_teacher(objective):
    g = torch.Generator().manual_seed(0)
    z, f = torch.randn(16, 4, generator=g), torch.randn(16, 6, generator=g)
    assert objective(Outputs(z, f), Outputs(z.clone(), f.clone()), None, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    other = Outputs(torch.randn(16, 4, generator=g), torch.randn(16, 6, generator=g))
    assert objective(Outputs(z, f), other, None, 1.0).item() > 1e-3


@pytest.mark.parametrize("kind", ["rsa", "rsa_mse", "rkd"])
def test_relation_compares_structure_not_coordinates(kind):
    """A rotated, scaled and zero-padded copy of the teacher's features (another width, as a
    student of another architecture has) has the teacher's relational structure."""
    g = torch.Generator().manual_seed(1)
    ft = torch.randn(12, 5, generator=g)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    fs = torch.cat([3.0 * ft @ q, torch.zeros(12, 3)], dim=1)
    loss = Relation(kind).term(Outputs(None, fs), Outputs(None, ft))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_rkd_with_a_single_example_is_zero_not_nan():
    f = torch.randn(1, 4)
    assert Relation("rkd").term(Outputs(None, f), Outputs(None, f + 1)).item() == 0.0


def test_features_and_logits_are_features_and_forward():
    torch.manual_seed(0)
    image = torch.randn(5, 1, 8, 8)
    tokens = torch.tensor([[5, 6, 7, 0], [8, 5, 0, 0], [6, 7, 8, 9]])
    models = [(MLP(4, (1, 8, 8), (16,), dropout=0.5), image), (CNN(4, (1, 8, 8), (4,), hidden=8, dropout=0.5), image)]
    models += [(model_from_conf(name, vocab_size=12, num_classes=2, d_model=8, nhead=2, dim_feedforward=16)
                if name != "lstm" else model_from_conf(name, vocab_size=12, num_classes=2, d_model=8), tokens)
               for name in ("lstm", "transformer", "universal_transformer")]
    for model, x in models:
        model.eval()
        f, z = model.features_and_logits(x)
        torch.testing.assert_close(f, model.features(x), rtol=0, atol=0)
        torch.testing.assert_close(z, model(x), rtol=0, atol=0)


# -- the hint regressor is trained with the student ----------------------------------------------
def test_hints_regressor_is_in_the_optimizer_and_changes_after_a_step():
    torch.manual_seed(0)
    student, teacher = MLP(3, (1, 4, 4), (8,)), MLP(3, (1, 4, 4), (6,))
    x = torch.randn(20, 1, 4, 4)
    with torch.no_grad():
        t_feats, t_logits = teacher.features_and_logits(x)
    objective = build_objective({"objective": "hints"}, student, teacher)
    assert tuple(objective.regressor.weight.shape) == (6, 8)  # student -> teacher
    module = DistillModule(student, objective, CachedOutputs(t_logits, t_feats), alpha=0.5, lr=1e-2)
    assert "objective.regressor.weight" in module.state_dict()  # checkpointed, so resuming keeps it
    opt = module.configure_optimizers()
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert {id(p) for p in objective.parameters()} <= in_opt
    assert {id(p) for p in student.parameters()} <= in_opt
    before = [p.detach().clone() for p in objective.parameters()]
    calls = {"features": 0}
    features = student.features

    def counting(inp):
        calls["features"] += 1
        return features(inp)

    student.features = counting
    batch = {"x": x[:10], "y": torch.randint(0, 3, (10,)), "idx": torch.arange(10)}
    loss = module.student_loss(batch)
    assert calls["features"] == 1  # features and logits from one forward
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, objective.parameters()))


@pytest.mark.parametrize("name", ["kd", "logits_mse"])
def test_objectives_without_features_keep_the_plain_student_step(name):
    torch.manual_seed(0)
    student = MLP(3, (1, 4, 4), (8,))
    x = torch.randn(6, 1, 4, 4)
    module = DistillModule(student, build_objective({"objective": name}, student), CachedOutputs(torch.randn(6, 3)))
    student.features_and_logits = None  # a feature path would fail
    batch = {"x": x, "y": torch.randint(0, 3, (6,)), "idx": torch.arange(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = module.loss_step(batch, 0)
    assert loss.item() > 0


# -- where the teacher's outputs come from ----------------------------------------------------------
@pytest.mark.parametrize("objective", [{"objective": "hints"}, {"objective": "relation", "relation": {"kind": "rkd"}},
                                       {"objective": "relation"}], ids=["hints", "rkd", "rsa"])
def test_cached_and_forward_teacher_outputs_give_the_same_loss(compose_tiny, tmp_path, objective):
    data = build_data(compose_tiny())
    torch.manual_seed(0)
    shape = tuple(data.train.x.shape[1:])
    teacher = CNN(data.num_classes, shape, (4,), hidden=12).eval()
    student = MLP(data.num_classes, shape, (16,)).eval()
    cached = teacher_cache(RunDir(tmp_path / "teacher"), teacher, data, features=True)
    assert cached.features.shape == (len(data.train), 12)
    obj = build_objective(objective, student, teacher)
    from_cache = DistillModule(student, obj, CachedOutputs(cached.logits, cached.features), alpha=0.5)
    from_forward = DistillModule(student, obj, FrozenTeacher(teacher), alpha=0.5)
    batch = next(iter(data.train_dataloader()))
    a, b = from_cache.student_loss(batch), from_forward.student_loss(batch)
    assert a.item() > 0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_teacher_feature_cache_is_added_to_a_logits_cache_and_reused(compose_tiny, tmp_path):
    data = build_data(compose_tiny())
    teacher = CNN(data.num_classes, tuple(data.train.x.shape[1:]), (4,), hidden=12).eval()
    run = RunDir(tmp_path / "teacher")
    logits_only = teacher_cache(run, teacher, data)
    assert logits_only.features is None
    files = sorted(p.name for p in (run / "teacher_cache").glob("*.npz"))
    assert files == [f"train-{data.fingerprint()}.npz"]
    stamp = (run / "teacher_cache" / files[0]).stat().st_mtime_ns
    both = teacher_cache(run, teacher, data, features=True)
    assert (run / "teacher_cache" / f"train-features-{data.fingerprint()}.npz").exists()
    assert (run / "teacher_cache" / files[0]).stat().st_mtime_ns == stamp  # logits not rewritten
    torch.testing.assert_close(both.logits, logits_only.logits)
    with torch.no_grad():
        torch.testing.assert_close(both.features, teacher.features(data.train.x))
    # the next student reads the files instead of running the teacher
    teacher.features = teacher.forward = None
    again = teacher_cache(run, teacher, data, features=True)
    assert torch.equal(again.features, both.features) and torch.equal(again.logits, both.logits)


# -- config -------------------------------------------------------------------------------------------
def test_objective_registry_and_config_validation(compose_tiny):
    assert set(OBJECTIVES) == {"kd", "logits_mse", "hints", "relation", "seqkd", "hard", "token"}
    for name in ("kd", "logits_mse", "hints", "relation"):
        for mode in ("self", "cross", "online"):
            cfg = compose_tiny(f"distill={mode}", f"objective={name}")
            config_mod.validate(cfg)
            assert (cfg.distill.mode, cfg.distill.objective) == (mode, name)
    with pytest.raises(ConfigError, match="distill.objective") as err:
        config_mod.validate(compose_tiny("distill=cross", "distill.objective=fitnet"))
    assert "kd, logits_mse, hints, relation" in str(err.value)
    with pytest.raises(ConfigError, match=r"distill\.relation\.kind"):
        config_mod.validate(compose_tiny("distill=cross", "objective=relation", "distill.relation.kind=cka"))
    with pytest.raises(ConfigError, match=r"distill\.alpha"):  # the head would never train
        config_mod.validate(compose_tiny("distill=cross", "objective=hints", "distill.alpha=1.0"))
    config_mod.validate(compose_tiny("distill=cross", "objective=hints", "distill.alpha=1.0",
                                     "distill.alpha_schedule=linear"))
    with pytest.raises(ConfigError, match=r"distill\.hints\.width"):
        check_config({"objective": "hints", "alpha": 0.5, "hints": {"width": 3}})


# -- end to end ----------------------------------------------------------------------------------------
def test_objective_grid_on_the_toy_task_writes_complete_run_dirs(compose_tiny):
    """The sweep ``distill=cross objective=kd,logits_mse,hints,relation``, plus self and online variants."""
    grid = {
        ("cross", "kd"): ["distill=cross"],
        ("cross", "logits_mse"): ["distill=cross", "objective=logits_mse"],
        ("cross", "hints"): ["distill=cross", "objective=hints"],
        ("cross", "relation"): ["distill=cross", "objective=relation"],
        ("self", "relation"): ["distill=self", "objective=relation", "distill.relation.kind=rkd"],
        ("online", "hints"): ["distill=online", "objective=hints"],
    }
    runs = {}
    for (mode, objective), overrides in grid.items():
        run = train(compose_tiny(*overrides))
        if objective == "kd":  # logits only: features are cached when an objective reads them
            assert [p.name for p in (run.teacher_dir / "teacher_cache").glob("*.npz")] == \
                [f"train-{run.meta['data_fingerprint']}.npz"]
        for name in RUN_FILES:
            assert (run / name).exists(), (objective, name)
        meta = run.meta
        assert (meta["distill"], meta["objective"]) == (mode, objective)
        if objective != "kd":
            assert f"-{mode}-{objective}-" in run.path.name
        runs[mode, objective] = run
    assert len({r.path for r in runs.values()}) == len(grid)
    assert runs["self", "relation"].meta["objective_options"] == {"kind": "rkd"}
    assert runs["cross", "relation"].meta["objective_options"] == {"kind": "rsa"}
    assert runs["cross", "kd"].meta["objective_options"] == {"temperature": 2.0, "t_squared": True}
    # one cross teacher serves every objective; its cache gained features for hints/relation
    teacher = {str(runs["cross", o].teacher_dir.path) for o in ("kd", "logits_mse", "hints", "relation")}
    assert len(teacher) == 1
    teacher = RunDir(teacher.pop())
    fingerprint = teacher.meta["data_fingerprint"]
    assert sorted(p.name for p in (teacher / "teacher_cache").glob("*.npz")) == \
        [f"train-{fingerprint}.npz", f"train-features-{fingerprint}.npz"]
    # feature objectives still learn the labels through the CE term
    for key in (("cross", "hints"), ("cross", "relation")):
        assert runs[key].metrics["splits"]["test"]["accuracy"] > 0.4


SVA_TINY = [
    "task=sva", "task.grammar.n_train=200", "+task.grammar.n_valid=40", "+task.grammar.n_test=40",
    "+task.grammar.n_deep=20", "+task.grammar.n_attractors=10", "task.probe_size=32",
    "model=transformer", "model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.dim_feedforward=32",
    "model@teacher.model=lstm", "teacher.model.d_model=24", "trainer.max_epochs=1",
]


def test_objective_grid_on_agreement_writes_complete_run_dirs(compose_tiny):
    """LSTM teacher -> Transformer student on subject-verb agreement (token sequences,
    different feature widths: 24 vs 16)."""
    for objective in ("logits_mse", "hints", "relation"):
        run = train(compose_tiny(*SVA_TINY, "distill=cross", f"objective={objective}"))
        for name in [*RUN_FILES, "outputs/attractors_1.npz"]:
            assert (run / name).exists(), (objective, name)
        meta = run.meta
        assert meta["task"] == "sva" and meta["objective"] == objective and meta["teacher_model"] == "lstm"
        assert set(run.metrics["splits"]) >= {"test", "attractors_1"}

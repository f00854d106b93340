"""Merging transfer-map tables made on different machines: the map and the verdicts re-derived from
the merged per-seed rows (checked against values worked out by hand), later inputs replacing
earlier rows, scenario renames, and the scenario declarations travelling with the tables."""
import math

import pandas as pd
import pytest

from analysis import merge_tables, transfer_figures
from analysis.command import run
from analysis.transfer_map import MAP_COLUMNS
from biaskd.errors import DataFormatError, MissingDataError

CELL = {"scenario": "vision", "teacher": "cnn_gp", "student": "mlp", "student_epochs": 100, "temperature": 5.0,
        "transfer_n": 0, "objective": "kd"}
#: per seed: kd, indep, self, teacher
VALUES = {1: (0.5, 0.4, 0.45, 0.9), 2: (0.6, 0.4, 0.55, 0.9), 3: (0.7, 0.5, 0.55, 0.9)}


def rows(values=VALUES, metric="translated", **cell):
    out = []
    for seed, vs in values.items():
        for role, v in zip(("kd", "indep", "self", "teacher"), vs):
            if v is not None:
                out.append({**CELL, **cell, "seed": seed, "role": role, "metric": metric, "value": v,
                            "run": f"{role}-s{seed}"})
    return out


def folder(path, per_seed, signal=None, bias=None, scenarios=None):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(per_seed).to_csv(path / "transfer_map_per_seed.csv", index=False)
    for name, frame in (("teacher_signal", signal), ("teacher_bias", bias), ("scenarios", scenarios)):
        if frame is not None:
            pd.DataFrame(frame).to_csv(path / f"{name}.csv", index=False)
    return path


def the_row(out, metric="translated", **where):
    frame = pd.read_csv(out / "transfer_map.csv")
    assert list(frame.columns) == MAP_COLUMNS
    f = frame[frame["metric"] == metric]
    for k, v in where.items():
        f = f[f[k] == v]
    assert len(f) == 1
    return f.iloc[0]


def test_the_map_of_merged_per_seed_rows_by_hand(tmp_path, capsys):
    """Seeds 1-2 made on one machine, seed 3 on another: one cell with three seeds."""
    a = folder(tmp_path / "a", rows({s: VALUES[s] for s in (1, 2)}))
    b = folder(tmp_path / "b", rows({3: VALUES[3]}))
    written = merge_tables.merge([str(a), str(b)], tmp_path / "out")
    row = the_row(tmp_path / "out")
    # kd - indep: 0.1, 0.2, 0.2 -> mean 1/6; sd sqrt(0.00666.../2) = 0.057735, se = sd / sqrt 3 = 1/30, t = 5
    assert row["n_seeds"] == 3 and row["seeds"] == "1,2,3"
    assert row["diff_vs_independent"] == pytest.approx(1 / 6, rel=1e-5)
    assert row["ci_half_width"] == pytest.approx(4.302653 / 30, rel=1e-5)  # t_{0.975, 2} * se
    assert row["p_value"] == pytest.approx(1 - 5 / math.sqrt(27), rel=1e-5)  # two-sided, 2 df: 1 - t / sqrt(t^2 + 2)
    # kd - self: 0.05, 0.05, 0.15 -> 1/12
    assert row["diff_vs_self"] == pytest.approx(1 / 12, rel=1e-5)
    # share: (0.6 - 0.43333) / (0.9 - 0.43333) = (1/6) / (7/15) = 5/14
    assert row["m_indep"] == pytest.approx(13 / 30, rel=1e-5) and row["teacher_gap"] == pytest.approx(7 / 15, rel=1e-5)
    assert row["transferred_share"] == pytest.approx(5 / 14, rel=1e-5)
    per_seed = pd.read_csv(written["per_seed"])
    assert len(per_seed) == 12 and per_seed["seed"].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    assert "0 row(s) of earlier inputs replaced" in capsys.readouterr().err
    for name in ("transfer_map", "teacher_signal", "teacher_bias", "scenarios", "markdown", "heatmap_vision"):
        assert written[name].is_file(), name
    assert not list((tmp_path / "out").glob(".writing-*"))  # the temporary folder is gone


def test_a_folder_merged_with_itself_gives_its_map_back(tmp_path, capsys):
    """Two metrics (the measure's order: ood_mean before translated although the rows give
    translated first) and a hard-label cell without a temperature."""
    per_seed = rows() + rows(metric="ood_mean") + rows(objective="hard", temperature=float("nan"))
    merge_tables.merge([str(folder(tmp_path / "a", per_seed))], tmp_path / "first")
    capsys.readouterr()
    written = merge_tables.merge([str(tmp_path / "first"), str(tmp_path / "first")], tmp_path / "again")
    first = (tmp_path / "first" / "transfer_map.csv").read_text()
    assert (tmp_path / "again" / "transfer_map.csv").read_text() == first
    assert written["per_seed"].read_text() == (tmp_path / "first" / "transfer_map_per_seed.csv").read_text()
    assert "36 row(s) of earlier inputs replaced" in capsys.readouterr().err  # every row of the first copy
    frame = pd.read_csv(tmp_path / "again" / "transfer_map.csv")
    # cells in the map's order (T = 5.0 before the empty T of the hard-label cell)
    assert frame[["objective", "metric"]].values.tolist() == [["kd", "ood_mean"], ["kd", "translated"],
                                                              ["hard", "translated"]]
    assert math.isnan(frame["temperature"].iloc[2])
    assert the_row(tmp_path / "again", objective="hard")["diff_vs_independent"] == pytest.approx(1 / 6, rel=1e-5)


def test_merging_what_the_map_wrote_gives_the_map_back(tmp_path):
    """The map of a sweep (analysis.transfer_map) and the map re-derived from its per-seed table
    are the same rows in the same order, equal within the CSV's 6 significant digits."""
    from analysis.transfer_map import build
    from synthetic import make_sweep

    make_sweep(tmp_path / "runs", task="mnist", seeds=(0, 1, 2), closeness={"cross": 0.8, "self": 0.1}, steps=())
    built = build([tmp_path / "runs"], tmp_path / "map")
    assert pd.read_csv(built["scenarios"]).values.tolist() == [["vision", "shift", "translated"]]
    merged = merge_tables.merge([str(tmp_path / "map")], tmp_path / "merged")
    a, b = pd.read_csv(built["transfer_map"]), pd.read_csv(merged["transfer_map"])
    text = [c for c in MAP_COLUMNS if not pd.api.types.is_numeric_dtype(a[c])]
    assert a[text].fillna("").equals(b[text].fillna("")) and a["n_seeds"].equals(b["n_seeds"])
    # the per-seed table keeps 6 significant digits (values ~0.5: +- 5e-7), which differences and
    # half widths carry; a t-test's small p is more sensitive to them
    p_values = ["p_value", "p_value_vs_self"]
    numbers = [c for c in MAP_COLUMNS if c not in text and c not in p_values]
    pd.testing.assert_frame_equal(a[numbers], b[numbers], check_dtype=False, rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(a[p_values], b[p_values], rtol=1e-3, atol=1e-7)
    assert merged["per_seed"].read_text() == built["per_seed"].read_text()
    assert merged["teacher_signal"].read_text() == built["teacher_signal"].read_text()
    assert merged["teacher_bias"].read_text() == built["teacher_bias"].read_text()
    assert pd.read_csv(merged["verdicts_v2"]).equals(pd.read_csv(built["verdicts_v2"]))


def test_a_later_input_replaces_rows_with_the_same_key(tmp_path, capsys):
    """Seed 3 run again: the later folder's values win, and the replaced rows are counted. The key
    holds across a table made before objectives were named, seeds written as 3.0 and the empty
    temperature of a hard-label cell."""
    old = [{k: v for k, v in r.items() if k != "objective"} for r in rows()]  # no objective column: kd
    old += rows(objective="hard", temperature=float("nan"))
    a = folder(tmp_path / "a", old)
    again = rows({3: (0.9, 0.5, 0.55, 0.9)}) + rows({3: (0.3, 0.5, None, 0.9)}, objective="hard",
                                                    temperature=float("nan"))
    b = folder(tmp_path / "b", [{**r, "seed": float(r["seed"])} for r in again])
    merge_tables.merge([str(a), str(b)], tmp_path / "out")
    err = capsys.readouterr().err
    assert "transfer_map_per_seed.csv: 7 row(s) of earlier inputs replaced" in err and f"7 of {a}" in err
    kd = the_row(tmp_path / "out", objective="kd")
    assert kd["m_kd"] == pytest.approx((0.5 + 0.6 + 0.9) / 3, rel=1e-5) and kd["seeds"] == "1,2,3"
    hard = the_row(tmp_path / "out", objective="hard")
    assert hard["m_kd"] == pytest.approx((0.5 + 0.6 + 0.3) / 3, rel=1e-5)
    # the hard cell's seed-3 self-distilled row was not run again: it stays
    assert hard["m_self"] == pytest.approx((0.45 + 0.55 + 0.55) / 3, rel=1e-5)
    per_seed = pd.read_csv(tmp_path / "out" / "transfer_map_per_seed.csv")
    assert len(per_seed) == 24 and per_seed["seed"].dtype.kind == "i"
    # the other order: the first folder's values win
    merge_tables.merge([str(b), str(a)], tmp_path / "reversed")
    assert the_row(tmp_path / "reversed", objective="kd")["m_kd"] == pytest.approx(0.6, rel=1e-5)


def test_teacher_tables_merge_by_their_keys(tmp_path):
    signal = {"scenario": "vision", "teacher": "cnn_gp", "distill": "cross", "student_epochs": 100,
              "temperature": float("nan"), "transfer_n": 0, "inputs": "train", "n": 10, "p_gold": 0.9,
              "entropy": 0.1, "top_not_gold": 0.05}
    bias = {"scenario": "vision", "model": "cnn_gp", "measure": "accuracy", "x": 1, "mean": 0.8, "half_width": 0.1,
            "n": 3}
    a = folder(tmp_path / "a", rows(), signal=[signal, {**signal, "inputs": "transfer"}],
               bias=[bias, {**bias, "x": 2, "mean": 0.7}])
    b = folder(tmp_path / "b", rows({3: VALUES[3]}), signal=[{**signal, "p_gold": 0.5}],
               bias=[{**bias, "x": 1.0, "mean": 0.6}])
    merge_tables.merge([str(a), str(b)], tmp_path / "out")
    s = pd.read_csv(tmp_path / "out" / "teacher_signal.csv")
    assert s[["inputs", "p_gold"]].values.tolist() == [["train", 0.5], ["transfer", 0.9]]
    t = pd.read_csv(tmp_path / "out" / "teacher_bias.csv")
    assert t[["x", "mean"]].values.tolist() == [[1, 0.6], [2, 0.7]]


def test_a_renamed_scenario_keeps_its_declaration_and_leaves_the_protocols_that_name_it(tmp_path, capsys):
    """The grammar's new runs as language_v3 beside the old language rows of the same cell: the
    config's declaration of ``language`` (attractors, A-accuracy) goes with the new name."""
    cell = {"scenario": "language", "teacher": "lstm", "student": "transformer", "student_epochs": 10,
            "transfer_n": 5000}
    old = folder(tmp_path / "v2", rows(metric="a_accuracy", **cell))
    new = folder(tmp_path / "v3", rows(metric="a_accuracy", **cell) + rows(metric="test", **cell),
                 bias=[{"scenario": "language", "model": "lstm", "measure": "accuracy", "x": 1, "mean": 0.9,
                        "half_width": 0.0, "n": 3}])
    written = merge_tables.merge([str(old), f"{new}:language=language_v3"], tmp_path / "out")
    frame = pd.read_csv(written["transfer_map"])
    assert frame[["scenario", "metric"]].values.tolist() == [["language", "a_accuracy"], ["language_v3", "a_accuracy"],
                                                             ["language_v3", "test"]]
    assert "transfer_map_per_seed.csv: 0 row(s) of earlier inputs replaced" in capsys.readouterr().err
    assert pd.read_csv(written["scenarios"]).values.tolist() == [["language", "attractors", "a_accuracy"],
                                                                 ["language_v3", "attractors", "a_accuracy"]]
    assert pd.read_csv(written["teacher_bias"])["scenario"].tolist() == ["language_v3"]
    # v2 judges the rows still named language; the renamed ones are out of its comparisons (said)
    claims = pd.read_csv(written["claims_v2"])
    assert claims[claims["metric"] == "a_accuracy"]["n"].tolist() == [0, 3, 3]  # claim 1's N = 0 cell has no rows
    merge_tables.merge([f"{new}:language=language_v3"], tmp_path / "alone")
    err = capsys.readouterr().err
    assert "scenario language renamed language_v3: protocol(s) v2, v3_language name language" in err
    assert not (tmp_path / "alone" / "claims_v2.csv").exists()
    with pytest.raises(DataFormatError, match="no scenario 'langauge' to rename"):
        merge_tables.merge([f"{new}:langauge=language_v3"], tmp_path / "typo")


def test_the_committed_scenarios_table_gives_a_renamed_scenario_its_headline(tmp_path, monkeypatch):
    """from_tables draws a scenario as scenarios.csv declares it; names it lacks, and folders
    without it, fall back to the config's declaration of the name."""
    cell = {"scenario": "language", "teacher": "lstm", "student": "transformer", "student_epochs": 10}
    src = folder(tmp_path / "v3", rows(metric="a_accuracy", **cell) + rows(metric="test", **cell))
    merge_tables.merge([f"{src}:language=language_v3"], tmp_path / "out")
    drawn = {}
    monkeypatch.setattr(transfer_figures, "draw_all", lambda m, b, scenarios, out: drawn.update(scenarios) or {})
    transfer_figures.from_tables(tmp_path / "out")
    assert (drawn["language_v3"].measure, drawn["language_v3"].headline) == ("attractors", "a_accuracy")
    (tmp_path / "out" / "scenarios.csv").unlink()  # an older folder: the name alone is all there is
    drawn.clear()
    transfer_figures.from_tables(tmp_path / "out")
    assert (drawn["language_v3"].measure, drawn["language_v3"].headline) == ("generic", "test")
    # a user's measure that cannot be imported here: its headline still leads, with the generic metrics
    pd.DataFrame([{"name": "language_v3", "measure": "not_installed.measures:mine", "headline": "a_accuracy"}]
                 ).to_csv(tmp_path / "out" / "scenarios.csv", index=False)
    transfer_figures.from_tables(tmp_path / "out")
    assert (drawn["language_v3"].measure, drawn["language_v3"].headline) == ("generic", "a_accuracy")


def test_the_protocol_is_judged_on_the_merged_rows(tmp_path):
    """Protocol v3's primary cell (vision_60k, cnn_gp -> mlp, 100 epochs, T = 5): seeds 1-3 from
    one machine, 4-5 from another; the teacher beats the independent MLP by 0.3 +- 0.01."""
    cell = {"scenario": "vision_60k"}
    seeds = {s: (0.5 + 0.01 * s, 0.4 + 0.002 * s * s, 0.45, 0.7 + 0.001 * s) for s in range(1, 6)}
    a = folder(tmp_path / "a", rows({s: seeds[s] for s in (1, 2, 3)}, metric="ood_mean", **cell))
    b = folder(tmp_path / "b", rows({s: seeds[s] for s in (4, 5)}, metric="ood_mean", **cell))
    written = merge_tables.merge([str(a), str(b)], tmp_path / "out")
    assert "claims_v3" in written and "claims_v2" not in written and "claims_v3_language" not in written
    claims = pd.read_csv(written["claims_v3"])
    teacher = claims[(claims["claim"] == 3)].iloc[0]
    diffs = [seeds[s][3] - seeds[s][1] for s in range(1, 6)]
    assert teacher["n"] == 5 and teacher["diff"] == pytest.approx(sum(diffs) / 5, rel=1e-5)
    assert teacher["verdict"] == "reproduced"
    assert claims[claims["metric"] == "translated"]["verdict"].tolist() == ["not evaluated (no runs)"] * 2
    verdicts = pd.read_csv(written["verdicts_v3"]).set_index("claim")["verdict"]
    assert verdicts[3] == "reproduced" and verdicts[5] == "not evaluated (no runs)"
    # seeds 1-3 alone: the same comparison with three seeds
    alone = pd.read_csv(merge_tables.merge([str(a)], tmp_path / "alone")["claims_v3"])
    assert alone[alone["claim"] == 3]["n"].tolist() == [3]


def test_a_missing_or_malformed_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    good = folder(tmp_path / "good", rows())
    with pytest.raises(MissingDataError, match="transfer_map_per_seed.csv: missing"):
        merge_tables.merge([str(good), str(tmp_path / "nowhere")], tmp_path / "out")
    assert run(merge_tables.main, [str(good), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: MissingDataError: {tmp_path / 'nowhere' / 'transfer_map_per_seed.csv'}: missing "
        "(python -m analysis.transfer_map writes it beside transfer_map.csv)")
    bad = folder(tmp_path / "bad", [{k: v for k, v in r.items() if k not in ("seed", "role")} for r in rows()])
    with pytest.raises(DataFormatError, match=r"bad/transfer_map_per_seed.csv: missing column\(s\) seed, role"):
        merge_tables.merge([str(good), str(bad)], tmp_path / "out")
    duplicated = folder(tmp_path / "dup", rows() + rows({1: VALUES[1]}))
    with pytest.raises(DataFormatError, match="8 rows share their key"):
        merge_tables.merge([str(duplicated)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_inputs_and_their_renames_on_the_command_line(tmp_path):
    assert merge_tables.parse_input("results/v3:language=language_v3") == (
        merge_tables.Path("results/v3"), {"language": "language_v3"})
    assert merge_tables.parse_input("a:x=y,z=w") == (merge_tables.Path("a"), {"x": "y", "z": "w"})
    assert merge_tables.parse_input("results/v3") == (merge_tables.Path("results/v3"), {})
    assert merge_tables.parse_input("odd:name") == (merge_tables.Path("odd:name"), {})  # no OLD=NEW: a path
    src = folder(tmp_path / "a", rows())
    assert run(merge_tables.main, [f"{src}:vision=vision_old", "--out", str(tmp_path / "out")]) == 0
    assert set(pd.read_csv(tmp_path / "out" / "transfer_map.csv")["scenario"]) == {"vision_old"}


def test_only_the_protocols_asked_for_are_judged(tmp_path, capsys):
    cell = {"scenario": "vision_60k"}
    src = folder(tmp_path / "a", rows(metric="ood_mean", **cell))
    assert "claims_v3" not in merge_tables.merge([str(src)], tmp_path / "none", protocols=[])
    assert not list((tmp_path / "none").glob("claims_*.csv"))
    assert run(merge_tables.main, [str(src), "--out", str(tmp_path / "v3"), "--protocols", "v3"]) == 0
    assert (tmp_path / "v3" / "claims_v3.csv").is_file()
    assert run(merge_tables.main, [str(src), "--out", str(tmp_path / "x"), "--protocols", "v3,v9"]) == 2
    assert "--protocols: unknown protocol(s) v9" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_seed_trained_again_replaces_all_of_its_metrics(tmp_path, capsys):
    """Seed 3 trained again elsewhere, its later table without the probe CKA: the old CKA of seed 3
    (of the model that is no longer in the table) is dropped, not kept beside the new accuracy;
    seeds 1-2 keep both metrics, and the cell's CKA is over them alone."""
    a = folder(tmp_path / "a", rows() + rows(metric="teacher_cka_probe"))
    b = folder(tmp_path / "b", rows({3: (0.9, 0.5, 0.55, 0.9)}))
    merge_tables.merge([str(a), str(b)], tmp_path / "out")
    err = capsys.readouterr().err
    assert "transfer_map_per_seed.csv: 8 row(s) of earlier inputs replaced" in err and f"8 of {a}" in err
    assert "4 of them dropped" in err and "metric=teacher_cka_probe" in err and "seed=3" in err
    per_seed = pd.read_csv(tmp_path / "out" / "transfer_map_per_seed.csv")
    assert sorted(per_seed[per_seed["metric"] == "teacher_cka_probe"]["seed"].unique()) == [1, 2]
    assert len(per_seed) == 2 * 4 * 2 + 4  # seeds 1-2: 4 roles x 2 metrics; seed 3: the later accuracy
    cka = the_row(tmp_path / "out", metric="teacher_cka_probe")
    assert cka["seeds"] == "1,2" and cka["m_kd"] == pytest.approx(0.55, rel=1e-5)
    assert the_row(tmp_path / "out")["m_kd"] == pytest.approx((0.5 + 0.6 + 0.9) / 3, rel=1e-5)
    # one role of the seed trained again: the seed's other roles keep their rows from the first input
    c = folder(tmp_path / "c", [r for r in rows({3: (0.9, None, None, None)})])
    merge_tables.merge([str(a), str(c)], tmp_path / "kd_only")
    per_seed = pd.read_csv(tmp_path / "kd_only" / "transfer_map_per_seed.csv")
    seed3 = per_seed[per_seed["seed"] == 3]
    assert sorted(seed3[seed3["metric"] == "teacher_cka_probe"]["role"]) == ["indep", "self", "teacher"]
    assert "1 of them dropped" in capsys.readouterr().err

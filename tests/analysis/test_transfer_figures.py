"""The transfer map's figures: readable labels, one colour scale for every heatmap, a single
cell shown with its context, and the committed figures drawn from the committed tables."""
import matplotlib
import pandas as pd
import pytest

from analysis import style, transfer_figures
from analysis.transfer_map import MAP_COLUMNS
from biaskd.scenario import Scenario

matplotlib.use("Agg")


def test_ids_read_as_words():
    assert style.split_label("translated_s1") == "translated, severity 1"
    assert style.split_label("attractors_1") == "1 attractor" and style.split_label("attractors_3") == "3 attractors"
    assert style.metric_label("top1_agreement") == "top-1 agreement"
    assert style.metric_label("some_new_metric") == "some new metric"
    assert style.with_n("cnn_gp", 5.0) == "cnn_gp (n=5)"


def test_cell_text_is_black_on_light_cells_and_white_on_dark_ones():
    assert style.text_colour((0.97, 0.97, 0.97, 1)) == "black"
    assert style.text_colour((0.40, 0.0, 0.12, 1)) == "white"  # the dark red of a large negative Δ


def _cell(scenario, teacher, epochs, metric, diff, n_seeds=5):
    row = dict.fromkeys(MAP_COLUMNS, float("nan"))
    row.update(scenario=scenario, teacher=teacher, student="mlp", student_epochs=epochs, temperature=5.0,
               transfer_n=0, metric=metric, n_seeds=n_seeds, diff_vs_independent=diff, ci_half_width=0.01,
               diff_vs_self=diff / 2, self_ci_half_width=0.01, transferred_share=0.2)
    return row


@pytest.fixture
def drawn(monkeypatch):
    figures = {}

    def keep(fig, path, dpi=130):
        figures[path.name] = fig
        return path
    monkeypatch.setattr(style, "save", keep)
    return figures


def test_every_heatmap_has_one_colour_scale_and_one_cell_is_shown_with_its_metrics(drawn, tmp_path):
    frame = pd.DataFrame([_cell("small", "cnn", 15, "test", 0.02), _cell("small", "cnn", 100, "test", 0.05),
                          _cell("large", "cnn", 15, "test", -0.3), _cell("large", "cnn_gp", 15, "test", 0.1),
                          _cell("one", "cnn", 15, "test", 0.04), _cell("one", "cnn", 15, "eval_mean", 0.01)])
    scenarios = {name: Scenario(name) for name in ("small", "large", "one")}
    transfer_figures.draw_all(frame, pd.DataFrame(), scenarios, tmp_path)
    for name in ("transfer_map_small.png", "transfer_map_large.png"):
        ax = drawn[name].axes[0]
        assert (ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) == (-0.3, 0.3)
        assert drawn[name].axes[1].get_ylabel().startswith("Δ vs independent student")  # the colour bar's label
        assert "test accuracy" in ax.get_title() and "n = 5 seeds" in ax.get_title()
    cell = drawn["transfer_map_one.png"].axes[0]
    assert [t.get_text() for t in cell.get_yticklabels()] == ["test accuracy", "mean accuracy on the eval splits"]
    assert {t.get_text() for t in cell.get_legend().get_texts()} == {"distilled − independent student",
                                                                     "distilled − self-distilled student"}
    epochs = drawn["transfer_map_epochs_small.png"]
    assert epochs.axes[0].get_title() == "test accuracy"
    assert "(n=5)" in epochs.axes[0].get_legend_handles_labels()[1][0]


def test_epoch_lines_of_one_teacher_differ_by_their_transfer_inputs(drawn, tmp_path):
    rows = [dict(_cell("g", "lstm", e, "test", d), transfer_n=n)
            for n, d in ((0, 0.01), (5000, -0.02)) for e in (10, 30, 100)]
    transfer_figures.epochs_figure(pd.DataFrame(rows), Scenario("g"), tmp_path / "epochs.png")
    ax = drawn["epochs.png"].axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert labels[0].startswith("lstm") and "N = 0" in labels[0] and "N = 5,000" in labels[1]
    n0, n5000 = (h.lines[0] for h in handles)  # each errorbar's data line
    assert n0.get_color() == n5000.get_color()  # one teacher, one colour
    assert n0.get_marker() != n5000.get_marker()
    # side by side, not on top of each other, and each still at its epochs within 5 %
    assert all(a < b for a, b in zip(n0.get_xdata(), n5000.get_xdata()))
    assert all(abs(x / e - 1) < 0.05 for line in (n0, n5000) for x, e in zip(line.get_xdata(), (10, 30, 100)))
    assert "transfer inputs" in drawn["epochs.png"].axes[-1].get_legend().get_title().get_text()


def test_a_teacher_has_one_colour_in_every_panel(drawn, tmp_path):
    rows = [{"scenario": s, "model": m, "measure": meas, "x": x, "mean": 0.5, "half_width": 0.1, "n": 3}
            for s, models in (("vision", ("cnn", "cnn_gp", "mlp")), ("language", ("lstm", "transformer")))
            for m in models for meas in (("accuracy", "consistency") if s == "vision" else ("accuracy",))
            for x in (0, 1)]
    scenarios = {"vision": Scenario("vision", "shift", "translated"),
                 "language": Scenario("language", "attractors", "a_accuracy")}
    transfer_figures.teacher_bias_figure(pd.DataFrame(rows), scenarios, tmp_path / "teacher_bias.png")
    colours = {}
    for ax in drawn["teacher_bias.png"].axes:
        for line, label in zip(*ax.get_legend_handles_labels()):
            colours.setdefault(label, set()).add(line[0].get_color())
        assert ax.get_ylabel().startswith("teacher's ") or not ax.get_visible()
    assert set(colours) == {"cnn (n=3)", "cnn_gp (n=3)", "mlp (n=3)", "lstm (n=3)", "transformer (n=3)"}
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == 5


def test_the_scenarios_of_the_committed_tables_are_read_from_the_config():
    found = transfer_figures.declared_scenarios(["vision", "vision_60k", "language_lm", "linzen", "unknown"])
    assert found["vision_60k"] == Scenario("vision_60k", "shift", "translated")
    assert found["language_lm"] == Scenario("language_lm", "attractors", "a_accuracy")
    assert found["unknown"] == Scenario("unknown")


def test_drawing_from_a_folder_without_the_map_is_one_line(tmp_path, capsys):
    from analysis.command import run

    assert run(transfer_figures.main, [str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: ArtifactError: {tmp_path / 'transfer_map.csv'}: missing "
                                               "(python -m analysis.transfer_map writes it)")


def test_a_hard_label_cell_is_its_own_row_without_a_temperature(drawn, tmp_path):
    soft, hard = _cell("vit", "cnn_gp", 50, "test", 0.05), _cell("vit", "cnn_gp", 50, "test", 0.01)
    hard.update(objective="hard", temperature=float("nan"))
    soft.update(objective="kd")
    transfer_figures.heatmap(pd.DataFrame([soft, hard]), Scenario("vit"), tmp_path / "transfer_map_vit.png", 0.1)
    ax = drawn["transfer_map_vit.png"].axes[0]
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == ["cnn_gp, T = 5", "cnn_gp, hard"]
    assert ax.get_ylabel() == "teacher, objective, temperature T"


def test_the_dose_response_draws_levels_and_paired_differences_against_n(drawn, tmp_path):
    rows = []
    for n, (kd, indep, own) in {0: (0.45, 0.40, 0.46), 500: (0.50, 0.52, 0.46), 5000: (0.70, 0.80, 0.47)}.items():
        row = _cell("grammar", "lstm", 10, "a_accuracy", kd - indep)
        row.update(transfer_n=n, m_kd=kd, m_indep=indep, m_self=own, m_teacher=0.92, diff_vs_self=kd - own,
                   objective="kd", student="transformer")
        rows.append(row)
    frame = pd.DataFrame([*rows, _cell("grammar", "lstm", 30, "a_accuracy", 0.1)])  # one N only: no line
    path = transfer_figures.dose_figure(frame, Scenario("grammar", "attractors", "a_accuracy"), tmp_path / "dose.png")
    assert path is not None
    level, diff = drawn["dose.png"].axes
    assert [t.get_text() for t in level.get_xticklabels()] == ["0", "500", "5,000"]
    assert [list(line.get_ydata()) for line in level.get_lines()] == [[0.92] * 3, [0.45, 0.50, 0.70],
                                                                      [0.46, 0.46, 0.47], [0.40, 0.52, 0.80]]
    assert all("(n=5)" in t.get_text() for t in level.get_legend().get_texts())
    assert diff.containers[0].lines[0].get_ydata() == pytest.approx([0.05, -0.02, -0.10])
    one_n = pd.DataFrame([_cell("grammar", "lstm", 10, "a_accuracy", 0.1)])
    assert transfer_figures.dose_figure(one_n, Scenario("grammar", "attractors", "a_accuracy"), tmp_path / "x.png") is None


def test_a_cell_that_rounds_to_zero_reads_plus_zero():
    from analysis.transfer_figures import cell_note

    # the vision_60k cnn T = 1 cell: mean −0.000068 over seeds, share −0.00056
    assert cell_note(-6.8e-05, 0.00762, -5.6e-04) == "+0.000\n±0.008\nshare 0.00"
    assert cell_note(0.1016, 0.0121, 0.2049) == "+0.102\n±0.012\nshare 0.20"
    assert cell_note(-0.0706, 0.175, float("nan")) == "-0.071\n±0.175"

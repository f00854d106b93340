"""The report's figures speak a reader's language: readable split and metric names, n in every
legend, λ defined on its axis, a labelled colour bar, and each distilled student beside its control."""
import matplotlib
import pandas as pd

from analysis import figures
from analysis.basins import LAMBDA_LABEL, plot_linear_paths
from analysis.sections_metrics import agreement_configs
from analysis.style import Style

matplotlib.use("Agg")


def test_bars_name_splits_and_metrics_and_give_n():
    summary = pd.DataFrame({"split": ["test", "translated_s1", "test", "translated_s1"],
                            "config": ["mlp independent", "mlp independent", "mlp distilled from cnn",
                                       "mlp distilled from cnn"],
                            "mean": [0.9, 0.4, 0.9, 0.5], "half_width": [0.01] * 4, "n": [5, 5, 3, 3]})
    ax = figures.plot_bars_ci(summary, ylabel="top1_agreement",
                              order=["mlp distilled from cnn", "mlp independent"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["test", "translated, severity 1"]
    assert ax.get_ylabel() == "top-1 agreement"
    assert ax.get_legend_handles_labels()[1] == ["mlp distilled from cnn (n=3)", "mlp independent (n=5)"]


def test_basins_define_lambda_on_the_axis():
    paths = pd.DataFrame({"lambda": [0.0, 0.5, 1.0] * 2, "loss": [1.0, 1.2, 0.9, 0.8, 0.9, 0.7],
                          "pair": ["mlp seed 1 · test"] * 3 + ["mlp seed 2 · test"] * 3})
    ax = plot_linear_paths(paths, hue="pair", metric="loss")
    assert ax.get_xlabel() == LAMBDA_LABEL == "interpolation λ (0 = run A, 1 = run B)"
    assert ax.get_ylabel() == "loss" and len(ax.get_lines()) == 2


def test_the_similarity_heatmap_labels_its_colour_bar():
    S = pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["a", "b"], columns=["a", "b"])
    ax = figures.plot_similarity_heatmap(S, measure="linear_cka")
    assert ax.figure.axes[-1].get_ylabel() == "linear CKA of probe features"
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.50", "0.50", "1.00"]


def test_each_distilled_student_stands_beside_its_independent_control():
    rows = [{"model": "mlp", "role": "student", "distill": d, "teacher_model": t, "reference_model": ref,
             "split": "test", "seed": 1, "top1_agreement": 0.5}
            for d, t, ref in (("none", None, "cnn"), ("none", None, "mlp"), ("self", "mlp", "mlp"),
                              ("cross", "cnn", "cnn"), ("none", None, "cnn_gp"), ("cross", "cnn_gp", "cnn_gp"))]
    at = pd.DataFrame(rows)
    at, order = agreement_configs(at, Style(at))
    assert order == ["mlp independent (vs cnn teacher)", "mlp distilled from cnn",
                     "mlp independent (vs cnn_gp teacher)", "mlp distilled from cnn_gp",
                     "mlp independent (vs mlp teacher)", "mlp self-distilled"]


def test_labels_and_colours_are_data_a_user_extends_without_editing_the_repository(tmp_path):
    """Scenario titles and architecture colours come from analysis/labels.yaml; a file named by
    $BIASKD_LABELS adds to them; a name in neither is still shown (by its name; a grey of its own)."""
    import os
    import re
    import subprocess
    import sys

    import pytest

    from analysis import style
    from biaskd.errors import ConfigError

    mine = tmp_path / "labels.yaml"
    mine.write_text("scenarios: {birdsong: 'birdsong: field recordings'}\nmodels: {wavenet: '#112233', cnn: '#000000'}\n")
    labels = style.load_labels(style.LABELS_FILE, mine)
    assert labels["models"]["wavenet"] == "#112233" and labels["models"]["cnn"] == "#000000"  # the later file wins
    assert labels["scenarios"]["birdsong"] == "birdsong: field recordings" and labels["models"]["mlp"]
    assert style.scenario_label("never_seen_task") == "never seen task"
    assert style.model_colour("never_seen_model") not in style.MODEL_COLOURS.values()  # a grey, not a listed colour
    code = "from analysis import style; print(style.model_colour('wavenet'), style.scenario_label('birdsong'))"
    env = {**os.environ, style.LABELS_ENV: str(mine)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "#112233 birdsong: field recordings"
    for text, message in [("models: {x: blue}\n", "models.x must be a colour #rrggbb; got 'blue'"),
                          ("colours: {x: '#000000'}\n", "the labels file has the sections scenarios, models only")]:
        mine.write_text(text)
        with pytest.raises(ConfigError, match=f"^{re.escape(f'{mine}: {message}')}$"):
            style.load_labels(mine)

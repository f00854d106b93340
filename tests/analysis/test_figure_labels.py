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

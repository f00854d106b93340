"""Analysis of biaskd run dirs: did distillation move the student's solution toward its teacher?

Reads run dirs only (never trains). Modules, each with one job:

* :mod:`analysis.runs` -- find and lazily load run dirs; tidy metrics frame
* :mod:`analysis.agreement` -- top-1 agreement, JS divergence, error consistency
* :mod:`analysis.bias` -- the bias itself: shift consistency, attractor drop, transferred share,
  what the teacher's soft targets carried
* :mod:`analysis.similarity` -- linear / minibatch / RBF CKA, RSA
* :mod:`analysis.maps` -- MDS maps of models and training paths
* :mod:`analysis.basins` -- loss along linear interpolations between solutions
* :mod:`analysis.calibration` -- ECE and reliability diagrams
* :mod:`analysis.tables` -- mean ± CI over seeds, transfer ratio, paired tests
* :mod:`analysis.figures` -- bar charts with CI whiskers, similarity heatmaps
* :mod:`analysis.report` -- ``python -m analysis.report RUNS... --out DIR``: its sections in
  :mod:`analysis.sections_metrics` and :mod:`analysis.sections_representations`, written
  through :mod:`analysis.markdown`
* :mod:`analysis.sweep_summary` -- ``summary.csv`` / ``paired.csv`` / ``summary.md`` of a finished sweep,
  from :mod:`analysis.controls` (each student against the teacher it is a control for, paired by seed)
* :mod:`analysis.reference` -- ``python -m analysis.reference --vision RUNS --language RUNS --out results``:
  per-scenario reports plus a README with a verdict on each of the paper's claims, from
  :mod:`analysis.scenario` (a scenario's runs and tables), :mod:`analysis.claims` (the claims as
  data and their comparisons) and :mod:`analysis.scale` (the runs' scale, from their run dirs)
"""

import importlib

# Re-exported lazily (PEP 562): ``import analysis`` stays cheap, and ``python -m
# analysis.similarity`` does not find its own module half-imported.
_EXPORTS = {
    "Run": "runs", "find_runs": "runs", "load_run": "runs", "runs_frame": "runs",
    "top1_agreement": "agreement", "js_divergence": "agreement", "from_logits": "agreement",
    "error_consistency": "agreement", "agreement_table": "agreement",
    "prediction_consistency": "bias", "shift_consistency_table": "bias", "attractor_drop": "bias",
    "attractor_drop_table": "bias", "transferred_share": "bias", "teacher_signal": "bias",
    "teacher_signal_table": "bias", "teacher_agreement_table": "bias", "bias_frame": "bias",
    "linear_cka": "similarity", "linear_cka_gram": "similarity", "minibatch_cka": "similarity",
    "rbf_cka": "similarity", "rsa": "similarity", "rsa_cosine": "similarity",
    "similarity_matrix": "similarity",
    "mds_map": "maps", "training_paths": "maps",
    "interpolate_state_dicts": "basins", "linear_path": "basins", "barrier": "basins",
    "expected_calibration_error": "calibration", "reliability_data": "calibration",
    "mean_ci": "tables", "summarize": "tables", "transfer_ratio": "tables", "transfer_table": "tables",
    "paired_tests": "tables",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")

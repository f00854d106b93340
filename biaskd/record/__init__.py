"""What runs and sweeps leave on disk, and how it is read: the run-dir format
(:mod:`~biaskd.record.schema`), its one writer (:mod:`~biaskd.record.artifacts`), a run's name,
folder and ``meta.json`` (:mod:`~biaskd.record.identity`), what "the same result" means
(:mod:`~biaskd.record.reproduce`), a sweep folder (:mod:`~biaskd.record.sweep`), a finished run
for people (:mod:`~biaskd.record.summary`) and for a hyperparameter search
(:mod:`~biaskd.record.optimized_metric`).

Plain code: it never imports the run lifecycle (:mod:`biaskd.run`), the commands or the
benchmarks, so the analysis can read run dirs through it without the training stack.
"""

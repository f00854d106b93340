"""Throughput benchmarks, ``python -m biaskd.bench [--quick]``: the tables and the command
(:mod:`~biaskd.bench.tables`), the training loops side by side (:mod:`~biaskd.bench.loops`),
Lightning's per-step cost (:mod:`~biaskd.bench.step_profile`) and wall times
(:mod:`~biaskd.bench.wall`). Nothing outside this package imports it."""

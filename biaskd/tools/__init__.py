"""The command-line tools: ``biaskd`` (:mod:`~biaskd.tools.cli`, a Hydra app over ``conf/``),
``python -m biaskd.rerun`` (:mod:`~biaskd.tools.rerun`) and ``python -m biaskd.verify``
(:mod:`~biaskd.tools.verify`). The commands keep their names: ``biaskd/cli.py``,
``biaskd/rerun.py`` and ``biaskd/verify.py`` only hand over to the modules here.

The tools import the run lifecycle (:mod:`biaskd.run`) and the record (:mod:`biaskd.record`);
neither imports the tools.
"""

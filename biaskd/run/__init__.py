"""A run's lifecycle: one config in, one complete run dir out.

The driver (:mod:`~biaskd.run.train`) checks the config and the Trainer's settings
(:mod:`~biaskd.run.preflight`), takes the run dir's lock and resumes or skips it
(:mod:`~biaskd.run.trust`), gets the teacher (:mod:`~biaskd.run.teacher`; for sequence-level KD
its sentences, :mod:`~biaskd.run.teacher_sentences`), builds what the run's recipe asks for
(:mod:`~biaskd.run.recipes`), fits, evaluates (:mod:`~biaskd.run.predict`), measures the student
against its teacher (:mod:`~biaskd.run.versus_teacher`) and writes. Several processes are one job
through :mod:`~biaskd.run.distributed`; a finished run comes back through
:mod:`~biaskd.run.rebuild`. What a run leaves on disk is :mod:`biaskd.record`'s business; the
commands that start runs are in :mod:`biaskd.tools`, which this package never imports.
"""

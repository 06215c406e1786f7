"""Masked (subnetwork-only) training with TRL, the job runner and its registry, run comparison.

Import the submodules directly; this package does no import-time work:
:mod:`~subnetviz.training.config` (TrainConfig), :mod:`~subnetviz.training.run` (train, run_job,
evaluate_accuracy), :mod:`~subnetviz.training.masking` (gradient masks and the bitwise check),
:mod:`~subnetviz.training.runner` (JobRunner, main_job, main_train),
:mod:`~subnetviz.training.registry` (the SQLite run registry),
:mod:`~subnetviz.training.compare` (compare_runs: subnetwork-only vs full finetune).
"""

"""Masked (subnetwork-only) training with TRL.

Import the submodules directly; this package does no import-time work:
:mod:`~subnetviz.training.config` (TrainConfig), :mod:`~subnetviz.training.run` (train, run_job),
:mod:`~subnetviz.training.evaluate` (evaluate_accuracy), :mod:`~subnetviz.training.masking`
(gradient masks and the bitwise check), :mod:`~subnetviz.training.trainers` (TRL trainers).
Jobs run through :mod:`subnetviz.jobs`; comparing two runs is :mod:`subnetviz.analysis.runs`.
"""

"""One job model for every kind of work (training, bigram mask training, continual learning).

- :mod:`~subnetviz.jobs.context`: the contract a job function sees (:class:`JobContext`, run folder files);
- :mod:`~subnetviz.jobs.kinds`: job kinds and their validation;
- :mod:`~subnetviz.jobs.registry`: the SQLite run registry (WAL);
- :mod:`~subnetviz.jobs.runner`: :class:`JobRunner` — submit, poll, cancel, list (local OS processes);
- :mod:`~subnetviz.jobs.scheduler`: the queue — settle ended runs, start queued ones (runners and workers);
- :mod:`~subnetviz.jobs.worker`: the process a job runs in (``python -m subnetviz job RUN_DIR``).

Import the submodules directly; this package does no import-time work.
"""

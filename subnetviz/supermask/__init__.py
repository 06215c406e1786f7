"""Supermask continual learning: SupSup, SSNeT, ExSSNeT and KKT over offline task sequences.

- :mod:`~subnetviz.supermask.layers`: masked layers with per-task scores (top-k, straight-through).
- :mod:`~subnetviz.supermask.data`: split-digits, permuted-digits, arithmetic-text benchmarks.
- :mod:`~subnetviz.supermask.methods`: finetune / SupSup / SSNeT / ExSSNeT (+KKT, task inference).
- :mod:`~subnetviz.supermask.metrics`: accuracy matrix, forgetting, transfer, overlap, capacity.
- :mod:`~subnetviz.supermask.job`: the ``continual`` job kind (validation, caching, outputs).

Nothing is imported here at package import time (no import-time work).
"""

"""Bigram subnetworks (Chang & Bergen 2025): which weights map the current token to the next.

- :mod:`~subnetviz.bigram.stats`: bigram tables (counted or exact) and token corpora;
- :mod:`~subnetviz.bigram.maskable`: maskable weights and their Q/K/V/O/MLP blocks per architecture;
- :mod:`~subnetviz.bigram.train`: mask training by continuous sparsification;
- :mod:`~subnetviz.bigram.evaluate`: fidelity, ablations, random subnetworks, generations;
- :mod:`~subnetviz.bigram.locate`: where a subnetwork lives and overlap with another;
- :mod:`~subnetviz.bigram.residual`: rotation and covariance similarity of the residual stream;
- :mod:`~subnetviz.bigram.job`: the ``bigram_mask`` job.

Submodules are imported on use (nothing heavy at package import).
"""

"""Experiments that train small grids with the project's own training code and measure them with its own
analysis (:mod:`subnetviz.experiments.drivers`: what drives update sparsity)."""

"""The result of :func:`~subnetviz.analysis.runs.compare_runs`, importable without torch: a saved
comparison (the demo build's, the disk cache's) is read back into it by pages that compute nothing."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class RunComparison:
    """Subnetwork-only run vs full finetune. Tables are tidy DataFrames.

    - ``per_tensor``: ``name, dtype, numel, criterion ("exact" | "atol"), tolerance, identical, share``
    - ``ulp_histogram``: ``bin, count, share`` over every compared float entry (bin labels
      :data:`~subnetviz.analysis.bits.ULP_LABELS_WITH_ZERO`: "0" = bitwise identical)
    - ``vs_base`` (with a base): ``name, numel, changed_full, changed_sub, changed_both, sub_outside_full``
    - ``accuracy`` (with eval data): ``model ("base" | "full" | "subnetwork"), accuracy``
    - ``unmatched``: tensor names present in only one of the two runs (reported, not compared)
    - ``base_unmatched``: compared tensors missing from the base or stored differently there
      (left out of ``vs_base``)
    - ``buffers``: buffers and quantization scales of the runs (not parameters: not compared)
    """

    full_dir: str
    sub_dir: str
    base_dir: str | None
    per_tensor: pd.DataFrame
    ulp_histogram: pd.DataFrame
    vs_base: pd.DataFrame | None
    accuracy: pd.DataFrame | None
    unmatched: tuple[str, ...]
    base_unmatched: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """One row per criterion: ``criterion, tolerance, identical, numel, share, mean_tensor_share``.

        ``share`` is parameter-weighted; ``mean_tensor_share`` averages the per-tensor shares.
        """
        g = self.per_tensor.groupby(["criterion", "tolerance"], sort=False)
        out = g.agg(identical=("identical", "sum"), numel=("numel", "sum"), mean_tensor_share=("share", "mean"))
        out = out.reset_index()
        out["share"] = out["identical"] / out["numel"]
        return out[["criterion", "tolerance", "identical", "numel", "share", "mean_tensor_share"]]

    @property
    def share_identical(self) -> float:
        """Parameter-weighted share of entries bitwise identical between the two runs."""
        f = self.to_frame()
        return float(f.loc[f["criterion"] == "exact", "share"].iloc[0])

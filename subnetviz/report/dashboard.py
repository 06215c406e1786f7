"""The standard dashboard of an analysis folder as sections of a self-contained HTML report.

Used by ``python -m subnetviz report DIR --out FILE`` (and reusable from a notebook): the same
figures the Update sparsity, Spectra and Overlap pages draw, built from what
:func:`subnetviz.analysis.updates.write_analysis` wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from subnetviz import figures
from subnetviz.analysis.sparsity_report import ulp_dtype
from subnetviz.analysis.update_pass import OVERLAP_NOTE
from subnetviz.analysis.updates import UpdateAnalysis, read_analysis
from subnetviz.cache import read_frame
from subnetviz.checkpoints.sources import escaped
from subnetviz.config import not_a_file
from subnetviz.errors import ConfigError, SubnetvizError
from subnetviz.figures import subspaces as subspace_figures
from subnetviz.report.html import ReportSection, write_report


def analysis_sections(analysis: UpdateAnalysis) -> list[ReportSection]:
    """Sparsity (per model heatmap, sweep, ULPs, special tensors), spectra and overlap sections."""
    summary = analysis.summary()
    paper = [c for c in summary.columns if str(c).startswith("sparsity@") and summary[c].isna().all()]
    summary = summary.drop(columns=paper)  # (the paper's 1e-5 figure where the sweep left 1e-5 out: all dashes)
    sections = [
        ReportSection("Summary", tables=[("Exact update sparsity per model", summary)], notes="; ".join(analysis.notes))
    ]
    figs = []
    for rep in analysis.reports:
        grid = rep.by_layer_module()
        figs.append(
            figures.sparsity_heatmap(
                grid[grid["layer"].notna()], title=f"{figures.plain_label(rep.model)}: update sparsity (exact)"
            )
        )
    sweep = pd.concat([r.sweep() for r in analysis.reports], ignore_index=True)
    figs.append(figures.tolerance_sweep(sweep[sweep["tolerance"].notna()]))
    ulps = pd.concat([r.ulp_histogram() for r in analysis.reports], ignore_index=True)
    figs.append(figures.ulp_histogram(ulps, dtype=ulp_dtype(analysis.reports)))  # units of the dtype compared
    figs.append(figures.module_bars(pd.concat([r.special_by_module() for r in analysis.reports], ignore_index=True)))
    sections.append(ReportSection("Update sparsity", figs, [("Sparsity per criterion", sweep)]))
    spec = analysis.spectra_located()
    if len(spec):
        sfigs = []
        for model in analysis.labels:
            g = spec[(spec["model"] == model) & spec["layer"].notna() & ~spec["skipped"].astype(bool)]
            g = g.assign(
                layer=g["layer"].astype(int),
                min_dim=g[["rows", "cols"]].min(axis=1),
                rank_frac_random=g["baseline_rank_frac"],
            )
            sfigs.append(figures.rank_heatmap(g, title=f"{figures.plain_label(model)}: update rank / min(m, n)"))
        sections.append(ReportSection("Spectra", sfigs, [("Rank, effective rank, stable rank", spec)]))
    src = analysis.source_dir
    if src is not None and (src / "overlap_pairwise.csv").exists():
        pw = read_frame(src / "overlap_pairwise.csv")
        ofigs = [figures.pairwise_matrix(pw, value=v, labels=analysis.labels) for v in ("o1", "jaccard")]
        otables = [("Pairwise overlap against chance", pw)]
        if (src / "overlap_regions.csv").exists():  # exclusive regions, by bit code (bit i = the i-th model)
            regions = read_frame(src / "overlap_regions.csv")
            ofigs.append(figures.upset(regions.assign(members=regions["code"].astype(int)), analysis.labels))
        if (src / "overlap_consensus.csv").exists() and (src / "overlap_sizes.csv").exists():
            sizes = read_frame(src / "overlap_sizes.csv")
            overall = read_frame(src / "overlap_consensus.csv").groupby("k", as_index=False)["count"].sum()
            chance = figures.chance_consensus(list(sizes["density"]), int(sizes["numel"].iloc[0]))
            ofigs.append(figures.consensus_bars(overall, chance=chance))
            # the chart's markers as numbers: the global chance (each mask independent at its density over every
            # entry compared; the folder holds no per-tensor densities), the expected count and the count over it
            expected = overall[["k"]].merge(chance, on="k", how="left")["chance"]
            table = overall.assign(
                expected_count_global=expected.to_numpy(),
                ratio_over_chance_global=(overall["count"] / expected.where(expected > 0)).to_numpy(),
            )
            otables.append(
                (
                    "Entries changed in exactly k of the masks, against independent masks: the global chance (each "
                    "mask at its density over all the entries compared), as the chart's markers",
                    table,
                )
            )
        opts = analysis.reports[0].options if analysis.reports else None
        rule = {"update masks": mask_rule(opts)} if opts is not None else {}
        # (the masks' rule, said where they are used: at a tolerance they hold fewer entries than Summary's counts;
        # and the overlap's own notes there too, as the Overlap page says them: tensors some models lack, left out)
        said = "\n".join(n.removeprefix(OVERLAP_NOTE) for n in analysis.notes if n.startswith(OVERLAP_NOTE))
        sections.append(ReportSection("Overlap of update masks", ofigs, otables, notes=said, params=rule))
    if src is not None and (src / "subspaces.csv").exists():  # `analyze` writes it beside the analysis
        sub = read_frame(src / "subspaces.csv")
        sfigs = [
            subspace_figures.angle_heatmap(
                sub[(sub["model"] == model) & sub["layer"].notna()],
                title=f"{figures.plain_label(model)}: largest principal angle, top-K left singular subspaces (°)",
            )
            for model in analysis.labels
        ]
        sections.append(
            ReportSection(
                "Subspaces of W_base vs W_ft",
                sfigs,
                [("Principal angles and singular-value ratios", sub)],
                notes="\n".join(_subspace_notes(src)),  # what was cast, skipped or left out, as the page says it
            )
        )
    return sections


def mask_rule(opts) -> str:
    """Which entries the update masks hold (``analyze --mask-tolerance``), as the report says it: the overlap is
    taken over these, so at a tolerance its masks hold fewer entries than the exact counts of the Summary."""
    if opts.mask_tolerance is None:
        return "exact (bitwise: every changed entry)"
    return f"|Δ| > {opts.mask_tolerance:g} (--mask-tolerance)"


def _subspace_notes(src: Path) -> list[str]:
    """The subspaces' notes `analyze` wrote beside ``subspaces.csv`` (none for a folder without them): a packed
    expert tensor stored quantized on a side, left out of the table, was otherwise left out without a word."""
    from subnetviz.cli.analysis import SUBSPACES_NOTES  # (the file's name where `analyze` writes it)

    path = src / SUBSPACES_NOTES
    if not path.is_file():
        return []
    notes = json.loads(path.read_text())
    if not isinstance(notes, list):
        raise ConfigError(f"{path}: expected a JSON list of notes, as `analyze --subspaces` writes it.")
    return [str(n) for n in notes]


def analysis_report(analysis_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the dashboard of ``analysis_dir`` (a folder from ``analyze --out``) to ``out``."""
    d = Path(analysis_dir)
    if kind := not_a_file(d / "summary.json"):  # (a named pipe there read "no summary.json"; nothing is opened)
        raise ConfigError(f"{d / 'summary.json'}: {kind}, not a regular file; refused.")
    if not (d / "summary.json").is_file():
        raise ConfigError(f"{d}: not an analysis folder (no summary.json); run `python -m subnetviz analyze` first.")
    analysis = read_analysis(d)
    try:
        sections = analysis_sections(analysis)  # (it also reads overlap_pairwise.csv)
    except SubnetvizError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hand-edited file: one line naming the folder, not a traceback
        raise ConfigError(
            f"{d}: not an analysis folder as `analyze` writes it ({type(exc).__name__}: {str(exc)[:160]})."
        ) from None
    opts = analysis.reports[0].options if analysis.reports else None
    numbers = (
        {  # what changes the numbers: the comparison's precision, the sweep's tolerances, the relative rule's η
            "precision": opts.precision or "stored dtype",
            "tolerances": ", ".join(f"{t:g}" for t in opts.tolerances) or "none",
            "relative η": f"{opts.eta:g}",
            "update masks": mask_rule(opts),
        }
        if opts is not None
        else {}
    )
    return write_report(
        out,
        "subnetviz · update analysis",
        sections,
        {"base": analysis.base, "models": ", ".join(analysis.labels), "folder": escaped(str(d)), **numbers},
    )

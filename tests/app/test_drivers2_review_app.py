"""The What-drives-sparsity page after the second review, on planted grids in the app's registry: the grid's notes
(a "not run" reason naming the server's PPO overlay folder, a failed run's exception) shown as text with server
paths relative to a root, on the page and in the Tables tab; a 3-seed grid whose seeds disagree reads undecided,
the rule said beside each verdict; a run that trained nothing is named, and the KL chart keeps its log axis."""

import numpy as np
import pandas as pd
import pytest

from tests.app_fixtures import decode, open_page, plotly_specs

pytestmark = pytest.mark.slow

BASE = {"algorithm": "grpo", "accuracy": 0.5, "learning_rate": 1e-4, "steps": 2, "beta": 0.0, "max_grad_norm": 1.0}
BASE |= {"optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0, "status": "done", "note": ""}
BASE |= {"grid_version": 2}
OUTSIDE = "/srv/hidden-prefix/venv/overlays/trl-ppo"  # under no allowed root of the app's test home


def _grid(points: dict[tuple[str, str], list[float]], kl: float = 0.01) -> pd.DataFrame:
    """(factor, value) -> bf16 sparsity per seed; an fp32 row (0.4 %) beside each; every point of seed 0 first."""
    from subnetviz.experiments.drivers import COLUMNS

    seeds = max(len(x) for x in points.values())
    rows = [
        {**BASE, "factor": f, "value": v, "seed": k, "precision": p}
        | {"sparsity": x[k] if p == "bf16" else 0.004, "kl_forward": kl}
        for k in range(seeds)
        for (f, v), x in points.items()
        for p in ("bf16", "fp32")
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _texts(at, *kinds) -> list[str]:
    """The elements' texts with Markdown's escapes taken out (what a visitor reads)."""
    kinds = kinds or ("caption", "warning", "info", "markdown")
    return [e.value.replace("\\", "").replace("\u200b", "") for k in kinds for e in getattr(at, k)]


def test_the_grid_s_notes_show_no_server_path_and_no_markdown(planted_grid):
    """A grid trained where PPO's overlay was missing: every visitor read the server's overlay folder in the "not
    run" caption and in the Tables tab; a failed run's exception was rendered as Markdown (`code`, *emphasis*)."""
    why = (
        f"TRL 0.29.1 (the last TRL with a PPOTrainer; the pinned 1.16 has none) is not installed in {OUTSIDE}; run "
        f"`bash scripts/bootstrap.sh` (it installs TRL 0.29.1 in {OUTSIDE}, used only by PPO runs)."
    )
    failed = "RuntimeError: *boom* in `step` [x](http://example.com)"
    grid = _grid({("algorithm", "sft"): [0.2], ("algorithm", "grpo"): [0.3]})
    left = [
        {**BASE, "factor": "algorithm", "value": "ppo", "algorithm": "ppo", "seed": 0, "status": "not run"}
        | {"note": why},
        {**BASE, "factor": "algorithm", "value": "dpo", "algorithm": "dpo", "seed": 0, "status": "failed"}
        | {"note": failed},
    ]
    label = planted_grid(pd.concat([grid, pd.DataFrame(left)], ignore_index=True))
    at = open_page("drivers", dr_run=label)
    assert not at.exception and not at.error, [e.value for e in at.error]
    raw = [e.value for k in ("caption", "warning", "markdown") for e in getattr(at, k)]
    assert not [t for t in raw if "hidden-prefix" in t]
    shown = _texts(at)
    assert f"algorithm=ppo not run: {why.replace(OUTSIDE, '…/trl-ppo')}" in shown
    # the exception as text: every Markdown character escaped (no emphasis, no code, no link)
    (warning,) = [w.value for w in at.warning]
    assert warning.startswith(r"algorithm\=dpo failed") and r"\*boom\*" in warning and r"\`step\`" in warning
    assert "[x](http" not in warning
    tables = open_page("drivers", dr_run=label, dr_tab="Tables")
    assert not tables.exception and not tables.error
    notes = [n for df in tables.dataframe for n in df.value.get("note", []) if isinstance(n, str) and n]
    assert why.replace(OUTSIDE, "…/trl-ppo") in notes and not [n for n in notes if "hidden-prefix" in n]


def test_seeds_that_disagree_read_undecided_with_the_rule_beside(planted_grid):
    """The 3-seed micro grid (its algorithm axis: DPO - SFT +3.4, -1.6, -2.7 points) read "not reproduced" under
    a caption saying such a difference is no evidence either way."""
    from subnetviz.experiments.drivers import SEED_RULE

    label = planted_grid(
        _grid(
            {
                ("algorithm", "sft"): [0.192444, 0.217487, 0.243275],
                ("algorithm", "dpo"): [0.226361, 0.201569, 0.216451],
                ("algorithm", "grpo"): [0.230758, 0.192473, 0.372464],
            }
        )
    )
    at = open_page("drivers", dr_run=label)
    assert not at.exception and not at.error, [e.value for e in at.error]
    (line,) = [m for m in at.markdown if "RL updates are sparser than SFT" in m.value]
    text = line.value.replace("\\", "").replace("\u200b", "")
    assert ":material/help: undecided." in text
    assert text.endswith("observed: DPO: 21.5%, GRPO: 26.5%, SFT: 21.8%; the seeds disagree (reproduced in 1 of 3).")
    assert line.proto.help == SEED_RULE and "every seed" in SEED_RULE
    assert any(t.startswith("3 seed(s) per point on ") and "every seed reads the same" in t for t in _texts(at))


def test_a_run_that_trained_nothing_is_named_and_the_kl_chart_stays_log(planted_grid):
    """steps=1 seed 1 trained nothing (both saves equal to the base, KL 0): no word on the page, and the KL chart
    went linear for every panel."""
    grid = _grid({("steps", "1"): [0.368, 0.5], ("steps", "2"): [0.23, 0.19]}, kl=0.004)
    still = (grid["value"] == "1") & (grid["seed"] == 1)
    grid.loc[still, ["sparsity", "kl_forward"]] = [1.0, 0.0]
    grid.loc[(grid["value"] == "2") & (grid["seed"] == 1), "kl_forward"] = 2e-8
    label = planted_grid(grid)
    at = open_page("drivers", dr_run=label, dr_value="Forward KL(π_base ‖ π)")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (warning,) = _texts(at, "warning")
    assert warning.startswith("steps=1 seed 1 trained nothing: the fp32 save equals the base bit for bit")
    (spec,) = plotly_specs(at)
    assert spec["layout"]["yaxis"]["type"] == "log"
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    assert np.allclose(decode(bars[0]["y"]).astype(float), [0.004, (0.004 + 2e-8) / 2])  # steps=1: seed 0 alone

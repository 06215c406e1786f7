"""The pages' HTML exports and captions (review): every export names the state it shows (the comparison precision
on Overlap and Spectra), carries the page's notes that qualify its numbers, holds Update sparsity's One matrix from
another tab, takes Behaviour's prompt from the URL only when the results hold it, and leaves out the Spectra charts
the page does not draw; the figure picker shows tag-like names as text; the Overlap, Drivers and Home texts say what
is true.

The export is taken where the page hands it to Streamlit: the "Export dashboard (HTML)" button's data, built as a
click builds it."""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.app_fixtures import decode, open_page, plotly_specs

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- the export, as a click builds it (app_fixtures.exports)


def _params(page: str) -> dict[str, str]:
    """The export's "Parameters" table (the header's), as text."""
    table = re.search(r'<table class="params"><caption>Parameters</caption>(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table, re.S)
    return {html.unescape(k): html.unescape(v) for k, v in rows}


def _notes(page: str) -> str:
    return html.unescape(re.search(r'<p class="notes">(.*?)</p>', page, re.S).group(1))


def _figures(page: str) -> list[dict]:
    """Every figure of the export: its traces and layout, read from the Plotly calls."""
    dec, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"sv-figure-\d+",\s*', page):
        data, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, re.compile(r"\s*,\s*").match(page, end).end())
        out.append({"data": data, "layout": layout})
    return out


def _title(fig: dict) -> str:
    return (fig["layout"].get("title") or {}).get("text") or ""


# ---------------------------------------------------------------- planted checkpoints


@pytest.fixture(scope="module")
def planted(app_env):
    """Checkpoints under the app's home, each a copy of a zoo member: ``same`` (the base: every matrix unchanged),
    ``<v1>`` (grpo-s0 under a tag-like name), ``short`` (grpo-s1 without its last layer's post-attention norm)."""
    from safetensors.torch import load_file, save_file

    from subnetviz.demo.build import load_zoo

    zoo = load_zoo()
    members = {m.id: Path(m.path) for m in zoo.members}
    root = Path(app_env) / "export-review-fixes"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    shutil.copytree(zoo.base, root / "same")
    shutil.copytree(members["grpo-s0"], root / "<v1>")
    shutil.copytree(members["grpo-s1"], root / "short")
    weights = load_file(root / "short" / "model.safetensors")
    dropped = sorted(n for n in weights if "post_attention_layernorm" in n)[-1]
    save_file(
        {n: t for n, t in weights.items() if n != dropped}, root / "short" / "model.safetensors", {"format": "pt"}
    )
    yield {"root": root, "members": members, "base": Path(zoo.base), "dropped": dropped, "zoo": zoo}
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- 1. the precision is named


@pytest.mark.parametrize("precision", ["bf16", "stored"])
def test_overlap_and_spectra_exports_name_the_comparison_precision(app_env, exports, precision):
    """Both pages build their Δ from the sidebar's comparison precision: two exports with different numbers
    (Jaccard 33.27 % stored, 5.20 % at bf16 on fp32 models) had the same parameters."""
    named = "bf16" if precision == "bf16" else "stored dtype"
    at = open_page("overlap", precision=precision, ov_masks=["Δ grpo-s0", "Δ grpo-s1"])
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _params(exports["Overlap"]())["precision"] == named
    at = open_page("spectra", precision=precision)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _params(exports["Spectra"]())["precision"] == named
    at = open_page("spectra", precision=precision, spec_tab="Subspaces of W_base vs W_ft")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _params(exports["Spectra"]())["precision"] == named


def test_overlap_of_saved_masks_only_names_no_precision(app_env, exports):
    """Saved masks are compared as saved: the sidebar's precision does not apply to them, and is not named."""
    import torch

    from subnetviz.masks import MaskSet, save_mask_set

    gen = torch.Generator().manual_seed(0)
    paths = [Path(app_env) / "uploads" / f"export-fix-random{i}.safetensors" for i in (0, 1)]
    paths[0].parent.mkdir(exist_ok=True)
    try:
        for path in paths:
            save_mask_set(path, MaskSet({"w": torch.rand(64, generator=gen) < 0.5}, {"method": "planted"}))
        chosen = [f"uploads/{p.stem}" for p in paths]
        at = open_page("overlap", masks=chosen, ov_masks=chosen, precision="bf16")
        page = exports["Overlap"]()
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.multiselect(key="ov_masks").value == chosen
    assert "precision" not in _params(page) and _params(page)["masks"] == json.dumps(chosen)


# ---------------------------------------------------------------- 2. One matrix from another tab


def test_sparsity_export_from_another_tab_holds_the_one_matrix_charts(app_env, exports, planted):
    """The URL's model and matrix (dd_model, dd_tensor), built on click: the "Which entries changed" image equals
    a NumPy comparison of the two checkpoints' bf16 bit patterns (share changed per block, in %), and the export
    names the matrix and its count."""
    from tests.zoo_fixtures import read_bits

    key = "layers.0.mlp.down_proj.weight"
    at = open_page("sparsity", sp_tab="Layers × modules", dd_model="grpo-s1", dd_tensor=key)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not any(
        "Which entries changed" in (s["layout"].get("title") or {}).get("text", "") for s in plotly_specs(at)
    )
    page = exports["Update sparsity"]()
    (image,) = [f for f in _figures(page) if _title(f).startswith("Which entries changed")]
    assert "grpo-s1 · " + key in _title(image)
    base, ft = read_bits(planted["base"]), read_bits(planted["members"]["grpo-s1"])
    (stored,) = [n for n in base if n.endswith(key)]
    changed = base[stored] != ft[stored]
    f = int(np.ceil(max(changed.shape) / 128))  # the drill draws at most 128 per side, blocks of f × f
    rows, cols = -(-changed.shape[0] // f), -(-changed.shape[1] // f)
    share = np.array(
        [[100 * changed[i * f : (i + 1) * f, j * f : (j + 1) * f].mean() for j in range(cols)] for i in range(rows)]
    )
    z = decode(image["data"][0]["z"]).astype(float)
    assert z.shape == share.shape and np.allclose(z, share)
    assert f"One matrix: {key}" in _notes(page) and f"{int(changed.sum()):,} of {changed.size:,} changed" in _notes(
        page
    )
    assert sum("grpo-s1 · " + key in _title(f) for f in _figures(page)) == 3  # the image, Δ and the row/col shares


# ---------------------------------------------------------------- 3. the page's notes


def test_overlap_export_says_over_which_tensors_it_compared(app_env, exports, planted):
    """A mask over layer 0 only against a whole-model Δ: the page says it compared the tensors in both; the export
    said nothing of it."""
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set

    ms = load_mask_set(next((planted["zoo"].root / "masks").glob("*.safetensors")))
    keep = {k: v for k, v in ms.masks.items() if "layers.0." in k}
    path = Path(app_env) / "uploads" / "export-fix-layer0.safetensors"
    path.parent.mkdir(exist_ok=True)
    try:
        save_mask_set(path, MaskSet(keep, {"method": "layer 0 only"}))
        at = open_page(
            "overlap", masks=["uploads/export-fix-layer0"], ov_masks=["Δ grpo-s1", "uploads/export-fix-layer0"]
        )
        page = exports["Overlap"]()
    finally:
        path.unlink(missing_ok=True)
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = f"Compared over the {len(keep)} tensors present in every chosen mask."
    assert any(c.value.replace("\\", "") == said for c in at.caption)
    assert said in _notes(page)


def test_series_export_carries_the_alignment_notes(app_env, exports, planted):
    """A checkpoint without one tensor: the series compares the others and says so on the page, and now in the
    export."""
    ft = [str(planted["members"]["grpo-s0"]), str(planted["root"] / "short")]
    at = open_page("series", ft=ft, series_src="workspace: base → finetuned in sidebar order")
    assert not at.exception and not at.error, [e.value for e in at.error]
    short = planted["dropped"].removeprefix("model.")
    said = [c.value.replace("\\", "") for c in at.caption if short in c.value.replace("\\", "")]
    assert said, [c.value for c in at.caption]
    notes = _notes(exports["Series"]())
    assert all(s in notes for s in said)


# ---------------------------------------------------------------- 4. Behaviour's prompt from the URL


@pytest.mark.parametrize(("asked", "shown"), [("999", 0), ("3", 3)])
def test_behaviour_export_takes_a_prompt_the_results_hold(app_env, exports, asked, shown):
    """From a tab other than Per token the export reads the URL's prompt: with 16 prompts, 999 named "prompt 999"
    over an empty chart. It falls back to prompt 0, as the tab's own number input does; a prompt held is kept."""
    at = open_page("behavior", bh_prompt=asked, bh_tab="Per model")
    assert not at.exception and not at.error, [e.value for e in at.error]
    page = exports["Behaviour"]()
    assert _params(page)["prompt"] == str(shown)
    (tokens,) = [f for f in _figures(page) if "which tokens moved" in _title(f)]
    assert f"prompt {shown}:" in _title(tokens) and tokens["data"] and len(decode(tokens["data"][0]["y"])) > 0


# ---------------------------------------------------------------- 5. Spectra: no chart the page does not draw


@pytest.mark.parametrize("view", ["Singular values", "Effective and stable rank"])
def test_spectra_export_leaves_out_what_the_page_does_not_draw(app_env, exports, planted, view):
    """A finetune equal to its base: the page says there are no singular values and no ranks to draw; the export
    held an empty "Singular values" chart and two heatmaps of zeros. It now has the page's words instead."""
    at = open_page("spectra", ft=[str(planted["root"] / "same")], spec_layer="0", spec_view=view)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not plotly_specs(at) and at.info
    page = exports["Spectra"]()
    titles = [_title(f) for f in _figures(page)]
    assert not [t for t in titles if "Singular values" in t or "effective rank" in t or "stable rank" in t], titles
    notes = _notes(page)
    assert "matrices chosen are unchanged (Δ = 0): no singular values to draw" in notes
    assert "same: every layer matrix is unchanged (Δ = 0)." in notes
    assert "Singular values: same · layer 0 · module all." in notes  # the view's state, whichever view is open


# ---------------------------------------------------------------- 6. the figure picker


def test_figure_picker_shows_a_tag_like_model_name_as_text(app_env, planted):
    """A model named "<v1>" reads "<v1>: sparsity (exact)" on its chart; the picker read ": sparsity (exact)"."""
    at = open_page("sparsity", ft=[str(planted["root"] / "<v1>")])
    assert not at.exception and not at.error, [e.value for e in at.error]
    (picker,) = [s for s in at.selectbox if s.label == "Chart"]
    assert "<v1>: sparsity (exact)" in picker.options, picker.options
    titles = [(s["layout"].get("title") or {}).get("text", "") for s in plotly_specs(at)]
    assert "&lt;v1&gt;: sparsity (exact)" in titles  # as Plotly draws it: the text "<v1>"


# ---------------------------------------------------------------- 7-9. what the pages say


def test_overlap_caption_says_when_the_global_chance_is_lower_and_when_higher(app_env):
    """Σₜ nₜpₜqₜ − N·P·Q = N·Cov(p, q) weighted by nₜ: the global chance is lower than the per-tensor one only where
    the masks' densities vary together. Two masks at (0.8, 0.1) and (0.1, 0.8) on two equal tensors: o1's chance
    is 0.45 globally and 0.18 per tensor; the caption said the global one is always the lower."""
    n = np.array([1000, 1000])

    def chances(p, q):  # (global, per tensor) chance of o1 = |A∩B|/|A| and of Jaccard, by hand
        both, a, b = (n * p * q).sum(), (n * p).sum(), (n * q).sum()
        gp, gq = a / n.sum(), b / n.sum()
        return (gq, both / a), (gp * gq / (gp + gq - gp * gq), both / (a + b - both))

    (o1_global, o1_tensor), (j_global, j_tensor) = chances(np.array([0.8, 0.1]), np.array([0.1, 0.8]))
    assert o1_global == pytest.approx(0.45) and o1_tensor == pytest.approx(160 / 900)
    assert o1_global > o1_tensor and j_global > j_tensor  # opposite densities: the global chance is the higher
    (o1_global, o1_tensor), (j_global, j_tensor) = chances(np.array([0.8, 0.1]), np.array([0.7, 0.2]))
    assert o1_global < o1_tensor and j_global < j_tensor  # densities together: the global chance is the lower
    at = open_page("overlap")
    text = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert "rise and fall together" in text and "the global chance is lower" in text
    assert "go opposite ways" in text and "it is higher and its × chance lower" in text


def _drivers_results() -> pd.DataFrame:
    from subnetviz.experiments.drivers import COLUMNS

    rows = [
        {"factor": "steps", "value": v, "seed": 0, "algorithm": "grpo", "precision": p, "sparsity": s, "accuracy": 0.5}
        for v, s in (("4", 0.9), ("8", 0.8))
        for p in ("bf16", "fp32")
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_drivers_caption_names_the_size_of_the_base_it_trained(app_env, planted):
    """The caption said "0.45M-parameter model" whatever the zoo: it names the base's parameters (counted here
    from its safetensors header) for a run that trained this zoo, and no number for one older than the zoo."""
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    raw = (planted["base"] / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    params = sum(int(np.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    built = pd.Timestamp(planted["zoo"].manifest.created).timestamp()
    runner = JobRunner()
    runs = {"export-fix-drivers-new": time.time(), "export-fix-drivers-old": built - 86400}
    for run_id, created in runs.items():
        run_dir = add_finished_run(runner, run_id, "drivers", run_id, created=created)
        (run_dir / "outputs").mkdir(parents=True, exist_ok=True)
        _drivers_results().to_csv(run_dir / "outputs" / "results.csv", index=False)
    try:
        new = open_page("drivers", dr_run="export-fix-drivers-new · export-fix-drivers-new")
        old = open_page("drivers", dr_run="export-fix-drivers-old · export-fix-drivers-old")
    finally:  # the app home is shared by the session's other page tests: leave its registry as it was
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in runs])
    for at in (new, old):
        assert not at.exception and not at.error, [e.value for e in at.error]
    new_text = " ".join(c.value.replace("\\", "") for c in new.caption)
    old_text = " ".join(c.value.replace("\\", "") for c in old.caption)
    assert f"1 seed(s) per point on a {params:,}-parameter model" in new_text
    assert "1 seed(s) per point on the demo base" in old_text and "0.45M" not in new_text + old_text


def test_home_does_not_count_the_papers(app_env):
    """Home said "analyses from three papers"; the app implements more sources than three."""
    at = open_page("home")
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Interactive analyses from papers on" in text and "three papers" not in text

"""AppTest for every page on the micro zoo: no exception, no error box, charts with data, and the
numbers shown equal the backend's for the same inputs."""

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixtures import APP, decode, open_page, plotly_specs
from tests.browser import PAGES

pytestmark = pytest.mark.slow


def _texts(at) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "info", "success") for e in getattr(at, kind))


# What each page must show on a fresh micro zoo, beyond "no exception, no error box": a page whose
# file is deleted or that draws nothing fails here (no page is exempt, none is skipped).
CONTENT = {
    "home": lambda at: len(at.get("page_link")) == 10 and "Demo zoo ready" in _texts(at),
    "workspace": lambda at: len(at.metric) >= 1 and len(at.dataframe) >= 1,
    "training": lambda at: any(b.label.startswith(("Launch", "Train", "Start")) for b in at.button),
    "bigram": lambda at: len(at.metric) >= 1 or "No bigram mask yet" in _texts(at),
    "continual": lambda at: plotly_specs(at) or "No finished continual-learning run yet" in _texts(at),
    "behavior": lambda at: len(plotly_specs(at)) >= 2 and len(at.dataframe) >= 1,  # the open tab: bars, curves
    "drivers": lambda at: plotly_specs(at) or "No finished drivers run yet" in _texts(at),
}


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_errors(app_env, name):
    assert (Path(APP).parent / "views" / f"{name}.py").exists(), f"page {name} is missing"
    at = open_page(name)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if name in CONTENT:
        assert CONTENT[name](at), f"{name}: the page shows none of what it should"
    else:
        specs = plotly_specs(at)
        assert specs, f"{name}: no chart"
        assert all(s["data"] for s in specs), f"{name}: a chart without traces"


def test_untrusted_text_is_escaped_for_markdown():
    """What a visitor puts in a URL reaches error boxes as text: ``[x](http://…)`` used to render a live
    link and ``![i](http://…)`` made the browser fetch a URL (the browser test shows it on a page)."""
    from subnetviz import ui

    shown = ui.plain("[Session expired — log in](http://evil.example/login)![i](http://evil.example/p.png) $x$ <b>")
    assert "](http" not in shown and "![" not in shown and "$x$" not in shown and "<b>" not in shown
    assert (
        shown.replace("\\", "").replace("\u200b", "")
        == "[Session expired — log in](http://evil.example/login)![i](http://evil.example/p.png) $x$ <b>"
    )


def test_missing_zoo_is_said_in_the_main_area(app_env, monkeypatch, tmp_path):
    """Without a zoo the pages say so where the visitor looks, not only in the sidebar."""
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(tmp_path))
    at = open_page("sparsity")
    assert not at.exception and not at.error, [e.value for e in at.error]
    main = [w.value for w in at.main.warning]
    assert any("demo zoo is not built" in w for w in main), main


def test_closed_server_shows_only_a_login(app_env, monkeypatch):
    token = "viewer-token-0123456789"
    monkeypatch.setenv("SUBNETVIZ_ACCESS_TOKEN", token)
    at = open_page("home")
    assert not at.exception
    assert [t.value for t in at.title] == ["subnetviz"] and at.text_input(key="_access_secret") is not None
    assert not any("Workspace" in m.value for m in at.sidebar.markdown) and not at.get("page_link")
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["token"] = "wrong-token-0000000000"
    at.run()
    assert at.error and "not valid" in at.error[0].value and not at.get("page_link")


def test_viewer_can_look_but_not_upload(app_env, monkeypatch):
    token = "viewer-token-0123456789"
    monkeypatch.setenv("SUBNETVIZ_ACCESS_TOKEN", token)
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["token"] = token
    at.run()
    assert not at.exception and at.session_state["_access"].name == "viewer"
    at.switch_page("views/workspace.py").run()
    assert not at.exception and not at.error and len(at.metric) >= 1
    assert not at.get("file_uploader") and any("cannot" in c.value.lower() for c in at.caption)


def test_an_editor_token_leaves_the_address_bar_and_a_viewer_token_stays(app_env, monkeypatch):
    """Views are shared by copying the address bar: the editor's token, once it has admitted the session, is
    dropped from the URL so that a copied link does not hand out editor rights (before, it stayed through every
    tab and selection); the viewer's token, which is how a closed server's links reach collaborators, stays."""
    viewer, editor = "viewer-token-0123456789", "editor-token-9876543210"
    monkeypatch.setenv("SUBNETVIZ_ACCESS_TOKEN", viewer)
    monkeypatch.setenv("SUBNETVIZ_EDITOR_TOKEN", editor)
    for token, role in ((editor, "editor"), (viewer, "viewer")):
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params["token"] = token
        at.query_params["sp_crit"] = "1e-05"
        at.run()
        assert not at.exception and at.session_state["_access"].name == role
        assert ("token" in at.query_params) == (role == "viewer") and at.query_params["sp_crit"] == "1e-05"
        at.switch_page("views/sparsity.py").run()  # the session keeps its role without the token
        assert not at.exception and at.session_state["_access"].name == role and at.get("plotly_chart")


def test_unicode_digits_in_a_url_are_dropped(app_env):
    """'²' is a digit to str.isdigit but not to int: Behaviour's prompt choice in a shared URL was a bug notice."""
    at = open_page("behavior", bh_prompt="²")  # (the token tab closed: the export reads the URL)
    assert not at.exception and not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("query", [{"ft": "x" * 300}, {"base": "x" * 300}, {"ft": "/srv/" + "x" * 300}])
def test_a_name_too_long_for_a_file_in_a_url_is_refused(app_env, typed_options, query):
    """A shared URL with a 300-letter name: every page ended in a bug notice (OSError: File name too long)."""
    for page in ("home", "workspace", "sparsity"):
        at = open_page(page, **query)
        assert not at.exception, [e.message for e in at.exception]
        assert [e.value for e in at.error if "a name longer than file systems take" in e.value], page


def test_workspace_numbers_equal_backend(app_env):
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.demo.build import load_zoo

    at = open_page("workspace")
    assert not at.exception
    zoo = load_zoo()
    members = {m.id: m.path for m in zoo.members}
    shown = {m.label: m.value for m in at.metric}
    direct = analyze_updates(members["base"], [members["grpo-s0"]], labels=["grpo-s0"])
    assert shown["grpo-s0"] == f"{100 * direct.reports[0].sparsity:.2f} %"
    # paths are shown relative to their root, never as the server's absolute path
    cells = [str(v) for df in at.dataframe for col in df.value.columns for v in df.value[col]]
    assert not [c for c in cells if c.startswith("/")], [c for c in cells if c.startswith("/")][:3]
    assert any(c.startswith("micro-zoo") and c.endswith("/base") for c in cells)
    # a missing value reads as the export writes it, not as a grey "None"
    assert at.dataframe and {df.proto.placeholder for df in at.dataframe} == {"—"}
    # the full manifest too (a built zoo's names the runs folder: uilogic.redacted, tests/unit/test_url_values.py)
    (manifest,) = [j.proto.body for j in at.get("json")]
    assert '"/' not in manifest, manifest[:300]


def test_sparsity_heatmap_equals_backend_table(app_env):
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.demo.build import load_zoo

    at = open_page("sparsity", sp_models=["grpo-s0"])
    assert not at.exception
    heat = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap")
    z = decode(heat["data"][0]["z"]).astype(float)
    zoo = load_zoo()
    members = {m.id: m.path for m in zoo.members}
    grid = analyze_updates(members["base"], [members["grpo-s0"]], labels=["grpo-s0"]).reports[0].by_layer_module()
    expected = 100 * grid[grid["layer"].notna()]["sparsity"].to_numpy()
    assert np.allclose(np.sort(z[np.isfinite(z)]), np.sort(expected))


def test_query_params_restore_the_view(app_env):
    at = open_page("sparsity", sp_crit="1e-05", sp_avg="per-tensor mean", sp_models=["grpo-s0", "dpo"])
    assert not at.exception
    assert at.selectbox(key="sp_crit").value == "1e-05"
    assert at.multiselect(key="sp_models").value == ["grpo-s0", "dpo"]
    # One tensor per layer × module cell: the per-tensor mean equals the weighted share, so it is shown greyed
    # (not a radio of one option), the help says why, and the stale URL entry is dropped.
    (avg,) = [r for r in at.radio if r.label == "Average"]
    assert avg.options == ["parameter-weighted", "per-tensor mean"] and avg.value == "parameter-weighted"
    assert avg.disabled and "one tensor" in avg.help
    assert "sp_avg" not in at.query_params


RESTORE = {  # page -> {widget key: a non-default value}, as a shared URL carries them
    "overlap": {
        "ov_crit": "1e-05",
        "ov_masks": ["Δ grpo-s0", "Δ dpo"],
        "ov_tab": "Per layer",
        "ov_pair": "Δ grpo-s0 ∩ Δ dpo",
    },
    "spectra": {"spec_models": ["grpo-s1", "dpo"], "spec_layer": "1", "spec_module": "k"},
    "series": {"series_src": "workspace: base → finetuned in sidebar order"},
    "sparsity": {"sp_tab": "One matrix", "dd_model": "dpo", "dd_tensor": "layers.1.mlp.up_proj.weight"},
}


@pytest.mark.parametrize("name", RESTORE)
def test_every_selection_is_restored_from_the_url(app_env, name):
    """A URL with the page's selections reopens exactly that view (the browser test checks that the
    page writes them: AppTest does not see bound widgets' URL writes); stale entries are dropped."""
    sel = RESTORE[name]
    at = open_page(name, **sel)
    assert not at.exception and not at.error, [e.value for e in at.error]
    for key, want in sel.items():
        if key.endswith("_tab"):
            continue  # a tab: restored when the widgets drawn inside it are
        widgets = [w for kind in ("selectbox", "multiselect", "radio") for w in at.get(kind) if w.key == key]
        assert widgets and widgets[0].value == want, (key, widgets and widgets[0].value)
    stale = open_page("sparsity", sp_models=["grpo-s0", "no-such-model"])
    assert stale.multiselect(key="sp_models").value == ["grpo-s0"]


def test_spectra_views_draw_only_their_own_charts(app_env):
    """Singular values (the default) draws one chart; the rank view, from the URL, each chosen model's effective
    and stable rank heatmaps (stable rank on one shared range) and the table."""
    sv = open_page("spectra", spec_models=["grpo-s1", "dpo"])
    assert not sv.exception and not sv.error
    assert [s["layout"]["title"]["text"].split("<br>")[0] for s in plotly_specs(sv)] == ["Singular values of updates"]
    rank = open_page("spectra", spec_models=["grpo-s1", "dpo"], spec_view="Effective and stable rank")
    assert not rank.exception and not rank.error
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(rank)]
    assert [t.split(":")[0] for t in titles] == ["grpo-s1", "grpo-s1", "dpo", "dpo"], titles
    stable = [s["data"][0] for s in plotly_specs(rank) if "stable rank" in s["layout"]["title"]["text"]]
    assert len({(h["zmin"], h["zmax"]) for h in stable}) == 1
    assert any("effective_rank_99" in d.value.columns for d in rank.dataframe)


def test_spectra_modules_are_those_of_the_chosen_layer(app_env):
    """lm_head and the embedding have no layer: offered under Layer 0 they drew an empty chart ("no data")."""
    layered = open_page("spectra", spec_models=["grpo-s1"], spec_layer="0", spec_module="lm_head")
    assert not layered.exception and not layered.error
    module = layered.selectbox(key="spec_module")
    assert "lm_head" not in module.options and "q" in module.options and module.value == "all"
    assert plotly_specs(layered)[0]["data"]
    every = open_page("spectra", spec_models=["grpo-s1"], spec_layer="all", spec_module="lm_head")
    assert every.selectbox(key="spec_module").value == "lm_head" and plotly_specs(every)[0]["data"]


@pytest.fixture
def base_copy(app_env) -> str:
    """grpo-s0's weights copied byte for byte into another folder under the roots (named ``grpo-s0`` too, so it is
    labelled so): a finetune equal to the base. The base's own file would be the base named again (not compared)."""
    import shutil

    from subnetviz.demo.build import load_zoo

    src = Path({m.id: m.path for m in load_zoo().members}["grpo-s0"])
    dst = Path(app_env) / "copies" / "grpo-s0"
    if not (dst / "model.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(src / name, dst / name)
    return str(dst / "model.safetensors")


def test_an_unchanged_matrix_is_said_not_drawn_on_spectra(app_env, typed_options, base_copy):
    """A finetune equal to the base (a frozen module, the same file): its Δ = 0 was a legend entry with an
    all-NaN curve on the log axis, and the rank view called it "below full rank"."""
    same = base_copy
    # (the file is labelled by its folder, as the library labels it: grpo-s0-2 beside the base grpo-s0)
    query = {"base": "grpo-s0", "ft": [same, "grpo-s1"], "spec_models": ["grpo-s0-2"]}
    at = open_page("spectra", **query)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not plotly_specs(at) and [i.value for i in at.info if "unchanged (Δ = 0): no singular values" in i.value]
    both = open_page("spectra", **{**query, "spec_models": ["grpo-s0-2", "grpo-s1"]})
    drawn = {t["name"].split(" · ")[0] for t in plotly_specs(both)[0]["data"] if t.get("showlegend") is not False}
    assert drawn == {"grpo-s1"} and [c.value for c in both.caption if "unchanged (Δ = 0)" in c.value]
    rank = open_page("spectra", **query, spec_view="Effective and stable rank")
    said = [c.value for c in rank.caption if c.value.startswith("Numerical rank")]
    assert said and "Below full rank" not in said[0] and "Unchanged (Δ = 0, rank 0)" in said[0], said
    assert not plotly_specs(rank) and [i.value for i in rank.info if "every layer matrix is unchanged" in i.value]


def test_an_empty_update_mask_on_the_overlap_page_is_said(app_env, typed_options, base_copy):
    """A finetune equal to the base has an empty update mask: its o1 row (0 / 0) was blank, with no word why."""
    same = base_copy
    at = open_page("overlap", base="grpo-s0", ft=[same, "grpo-s1"], ov_tab="Pairwise")
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = [c.value for c in at.caption if "no entry in the mask" in c.value]
    assert said and said[0].replace("\\", "").startswith("Δ grpo-s0")  # the file, labelled by its folder


def test_side_by_side_heatmaps_share_one_colour_range(app_env):
    models = ["grpo-s0", "grpo-s1", "dpo", "sft"]  # more than the old limit of four is allowed too
    at = open_page("sparsity", sp_models=models)
    assert not at.exception and not at.error
    heats = [s["data"][0] for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap"]
    assert len(heats) == len(models)
    ranges = {(h["zmin"], h["zmax"]) for h in heats}
    assert len(ranges) == 1, ranges
    lo, hi = ranges.pop()
    zs = np.concatenate([decode(h["z"]).astype(float).ravel() for h in heats])
    assert np.isclose(lo, np.nanmin(zs)) and np.isclose(hi, np.nanmax(zs))
    bars = [s for s in plotly_specs(at) if s["data"][0]["type"] == "bar"]
    assert [str(x) for x in bars[0]["data"][0]["x"]] == models  # overall sparsity, one bar per model


def test_the_figure_picker_names_charts_by_their_titles(app_env):
    """The paper-figure picker listed internal keys (heat-grpo-s0, pw-o1), not what the charts are called."""
    at = open_page("sparsity", sp_models=["grpo-s0", "dpo"])
    assert not at.exception and not at.error
    (picker,) = [b for b in at.selectbox if str(b.key).startswith("pub-chart-Update sparsity")]
    options = picker.options
    assert options[0] == "Overall update sparsity per model (exact)", options
    assert "grpo-s0: sparsity (exact)" in options and not any(o.startswith("heat-") for o in options)
    # A control that retitles a chart gives the picker another key: with the same options and new names the
    # browser went on showing the old name of the chosen chart (Drivers' measure, Subspaces' side); the same
    # names keep the same key (the choice stays).
    same = open_page("sparsity", sp_models=["grpo-s0", "dpo"])
    other = open_page("sparsity", sp_models=["grpo-s0", "dpo"], sp_crit="relative")
    keys = [[str(b.key) for b in a.selectbox if str(b.key).startswith("pub-chart-")] for a in (same, other)]
    assert keys[0] == [picker.key] and keys[1] != keys[0] and len(keys[1]) == 1


def test_one_matrix_follows_the_criterion(app_env):
    """The One matrix view counts under the chosen criterion, equal to the analysis table's count for that tensor."""
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.demo.build import load_zoo
    from subnetviz.figures import format_number
    from subnetviz.uilogic import plain

    zoo = load_zoo()
    members = {m.id: m.path for m in zoo.members}
    rep = analyze_updates(members["base"], [members["grpo-s0"]], labels=["grpo-s0"]).reports[0]
    # the largest tolerance offered, on the matrix where it leaves most entries unchanged (planted by the data)
    tol = f"{max(rep.options.tolerances):g}"
    mats = rep.tensors[rep.tensors["ndim"] == 2]
    gap = mats["changed"] - mats[f"changed@{tol}"]
    chosen = mats.loc[gap.idxmax(), "key"]
    assert gap.max() > 0, "no matrix of grpo-s0 has an update below the largest tolerance"
    counts = {}
    for crit, col in [("exact", "changed"), (tol, f"changed@{tol}")]:
        at = open_page("sparsity", sp_tab="One matrix", sp_crit=crit, dd_model="grpo-s0", dd_tensor=chosen)
        assert not at.exception and not at.error, [e.value for e in at.error]
        key = at.selectbox(key="dd_tensor").value
        assert key == chosen
        row = rep.tensors[rep.tensors["key"] == key].iloc[0]
        image = next(s for s in plotly_specs(at) if "changed" in s["layout"]["title"]["text"])
        assert crit in image["layout"]["title"]["text"]
        cap = next(c.value for c in at.caption if "criterion" in c.value)
        counts[crit] = int(cap.split(" · ")[3].split(" of ")[0].replace(",", ""))
        # named as in the picker, then as stored in the checkpoint; a small |Δ| in e-notation
        assert cap.startswith(plain(key) + " (stored as " + plain(row["name"]) + ")"), cap
        assert cap.endswith(f"largest |Δ| {format_number(row['max_abs_delta'])}")
        assert counts[crit] == int(row[col]), (crit, cap)
        assert any("Signed update" in s["layout"]["title"]["text"] for s in plotly_specs(at))
    assert counts[tol] < counts["exact"]


def test_path_outside_roots_is_refused(app_env):
    """AppTest cannot type a new option into a selectbox; the browser test does that. Here: the resolver."""
    from subnetviz import selection
    from subnetviz.errors import PathNotAllowedError

    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        selection.resolve_choice("/etc", {})
    zoo_base = str(app_env / "zoo" / "base")
    assert selection.resolve_choice(zoo_base, {}).endswith("base")


def test_mask_upload_converts_pickles_safely(app_env, tmp_path):
    import io
    import os
    import pickle

    import torch

    from subnetviz import selection
    from subnetviz.errors import MaskError, UnsafePickleError
    from subnetviz.masks import load_mask_set

    good = pickle.dumps({"transformer.h.0.mlp.c_fc.weight": np.eye(3, dtype=bool), "orig_model_name": "gpt2"})
    stored = selection.save_upload("subnetwork_dict_lambda1e1.pickle", good)
    ms = load_mask_set(stored)
    assert torch.equal(ms.masks["transformer.h.0.mlp.c_fc.weight"], torch.eye(3, dtype=torch.bool))
    assert stored.parent == app_env / "uploads"
    assert ms.metadata["source"] == "upload subnetwork_dict_lambda1e1.pickle"  # not the temporary copy read

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    with pytest.raises(UnsafePickleError, match=r"^evil\.pickle: pickle asks for posix\.system"):
        selection.save_upload("evil.pickle", pickle.dumps({"w": Evil()}))
    assert not sentinel.exists()
    # a broken upload is named as the visitor named it (the reader saw only a temporary copy)
    with pytest.raises(MaskError, match=r"^half\.safetensors: not a readable safetensors mask file"):
        selection.save_upload("half.safetensors", stored.read_bytes()[:40])
    with pytest.raises(MaskError, match=r"^junk\.pkl: not a readable pickle"):
        selection.save_upload("junk.pkl", b"\x00junk")
    # a mask saved with torch.save (bf16 0/1, as the RL-subnetwork code keeps them), and one that would run code
    buf = io.BytesIO()
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.eye(4, dtype=torch.bfloat16)}, buf)
    from_torch = load_mask_set(selection.save_upload("rl mask.pt", buf.getvalue()))
    assert torch.equal(from_torch.masks["model.layers.0.mlp.up_proj.weight"], torch.eye(4, dtype=torch.bool))
    assert from_torch.metadata["source"] == "upload rl mask.pt"
    buf = io.BytesIO()
    torch.save({"w": Evil()}, buf)
    with pytest.raises(UnsafePickleError, match=r"^evil\.pth: .*it asks for posix\.system"):
        selection.save_upload("evil.pth", buf.getvalue())
    assert not sentinel.exists()
    assert not list((app_env / "uploads").glob(".*"))


def test_uploads_never_replace_each_other_and_are_capped(app_env, monkeypatch):
    """``my mask.safetensors`` and ``my_mask.safetensors`` normalise alike: both are kept; the same
    bytes twice are stored once; past the cap nothing is stored and no temporary file is left."""
    import io

    import torch

    from subnetviz import selection
    from subnetviz.errors import MaskError
    from subnetviz.masks import MaskSet, load_mask_set, save_mask_set

    blobs = []
    for seed in (0, 1):
        buf = app_env / f"src{seed}.safetensors"
        save_mask_set(buf, MaskSet({"w": torch.rand(64, generator=torch.Generator().manual_seed(seed)) < 0.5}, {}))
        blobs.append(buf.read_bytes())
    a = selection.save_upload("my mask.safetensors", blobs[0])
    b = selection.save_upload("my_mask.safetensors", io.BytesIO(blobs[1]))  # streamed like Streamlit's UploadedFile
    assert a != b and a.exists() and b.exists()
    assert not torch.equal(load_mask_set(a).masks["w"], load_mask_set(b).masks["w"])
    assert selection.save_upload("my mask.safetensors", blobs[0]) == a
    monkeypatch.setenv("SUBNETVIZ_MAX_UPLOAD_MB", str(len(blobs[0]) / 2 / (1 << 20)))
    with pytest.raises(MaskError, match="larger than the .* uploads may have"):
        selection.save_upload("big.safetensors", io.BytesIO(blobs[0]))
    assert not list((app_env / "uploads").glob(".*")) and not list((app_env / "uploads").glob("big*"))


def _titles_per_tab(at, page: str, key: str, **query) -> dict[str, list[str]]:
    """Each tab of ``page`` opened through its URL entry ``key``: tab label -> titles of the charts drawn."""
    out = {}
    for i, label in enumerate(t.label for t in at.tabs):
        one = at if i == 0 else open_page(page, **{key: label}, **query)
        assert not one.exception and not one.error, [e.value for e in one.error]
        out[label] = [s["layout"]["title"]["text"] for s in plotly_specs(one)]
    return out


def test_the_bigram_page_takes_an_hf_corpus_from_the_datasets_cache(app_env, monkeypatch):
    """'hf:wikitext', as the README offers, was taken for a relative path: "outside the folders this server may
    read", or rewritten to 'main/hf:wikitext' and refused. It is read from the datasets cache when that cache
    lies under the roots, and refused saying so when it does not."""
    from datasets import config as datasets_config

    from subnetviz.errors import ConfigError, PathNotAllowedError
    from subnetviz.uilogic import corpus_choice

    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", str(app_env / "hf-datasets"))
    assert corpus_choice("hf:wikitext") == "hf:wikitext" and corpus_choice("zoo") == "zoo"
    assert corpus_choice("hf:org/name:validation") == "hf:org/name:validation"
    # a path given as hf: was read by load_dataset from any folder, past the roots
    for path in ("hf:/etc", "hf:../secret", "hf:a/../../b", "hf:./x", "hf:~/notes"):
        with pytest.raises(ConfigError, match="names a dataset of the hub by its id"):
            corpus_choice(path)
    for loader in ("hf:text", "hf:json:train"):  # datasets' file-format loaders read the working directory's files
        with pytest.raises(ConfigError, match="file-format loader of datasets"):
            corpus_choice(loader)
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", "/srv/elsewhere/datasets")
    with pytest.raises(PathNotAllowedError, match="hf: corpora are read from the Hugging Face datasets cache"):
        corpus_choice("hf:wikitext")
    at = open_page("bigram")
    at.text_input(key="bg_corpus").input("hf:wikitext").run()
    assert not at.exception and [e.value for e in at.error if "datasets cache" in e.value]


def test_continual_page_with_a_masked_method_at_density_one(app_env):
    """A valid run with SupSup at densities 0.05 and 1.0 beside finetuning: the page picked "finetuning" as the
    rows at density 1.0, so SupSup came twice, a bug notice (ValueError) and a pivot of duplicate rows; 1.0
    could not be chosen."""
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    rid = runner.submit(
        {
            "kind": "continual",
            "benchmark": "permuted-digits",
            "methods": ["finetune", "supsup"],
            "density": [0.05, 1.0],
            "tasks": 2,
            "seeds": [0],
            "epochs": {"mask": 1, "weight": 1, "finetune": 1},
        },
        name="density one",
    )
    rec = runner.wait(rid, timeout=300)
    assert rec.status == "succeeded", rec.error
    # written as percentages, as the Launch form writes them; an older link's fraction is read too
    for density, value in (("5 %", 0.05), ("100 %", 1.0), ("0.05", 0.05), ("1.0", 1.0)):
        for tab in ("Summary", "After each task"):
            at = open_page("continual", cl_run=rid, cl_density=density, cl_tab=tab)
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert at.selectbox(key="cl_density").options == ["5 %", "100 %"]
            assert at.selectbox(key="cl_density").value == value, density
            assert at.query_params.get("cl_density") == (None if value == 0.05 else "100 %"), density
            assert sorted(at.dataframe[0].value["label"]) == ["SupSup", "finetune"], density


def test_continual_page_shows_the_runs_numbers(app_env):
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.supermask.job import load_result

    runner = JobRunner()
    rid = runner.submit(
        {
            "kind": "continual",
            "benchmark": "permuted-digits",
            "methods": ["supsup", "exssnet"],
            "density": [0.05],
            "tasks": 3,
            "seeds": [0],
            "epochs": {"mask": 2, "weight": 2},
        },
        name="apptest",
    )
    rec = runner.wait(rid, timeout=300)
    assert rec.status == "succeeded", rec.error
    runs = open_page("training", tr_view="Runs")  # the finished run's progress bar keeps its fraction
    progress = next(d.value.set_index("id")["progress"] for d in runs.dataframe if "progress" in d.value.columns)
    assert progress[rid] == 1.0  # not 100: the percent view of shares is for columns without a config
    at = open_page("continual", cl_run=rid)
    assert not at.exception and not at.error
    shown = at.dataframe[0].value
    expected = load_result(rec.outputs)["summary"]
    assert np.allclose(shown["final_acc_mean"].to_numpy(), 100 * expected["final_acc_mean"].to_numpy())  # in %
    titles = _titles_per_tab(at, "continual", "cl_tab", cl_run=rid)
    assert list(titles) == ["Summary", "After each task", "Capacity"]
    # only the open tab draws: the default one holds the two summary charts, the others theirs
    assert len(titles["Summary"]) == 2 and "accuracy" in titles["Summary"][0].lower()
    assert sorted(t.split("<br>")[0] for t in titles["After each task"]) == [
        "ExSSNeT, density 5 %, seed 0",
        "SupSup, density 5 %, seed 0",
    ]
    assert len(titles["Capacity"]) == 3 and "owner task" in titles["Capacity"][2]


def test_bigram_page_shows_the_backend_numbers(app_env):
    from subnetviz import config, selection
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    base = str(config.zoo_dir() / "base")
    ids = [
        runner.submit(
            {
                "kind": "bigram_mask",
                "model": base,
                "corpus": "zoo",
                "target": t,
                "lambda": 10.0,
                "preset": "fast",
                "steps": 60,
                "seed": 0,
            }
        )
        for t in ("bigram", "optimal")
    ]
    for rid in ids:
        rec = runner.wait(rid, timeout=300)
        assert rec.status == "succeeded", rec.error
    masks = {v: k for k, v in selection.saved_masks().items()}
    bigram, optimal = (str(runner.get(rid).outputs / "mask.safetensors") for rid in ids)
    at = open_page("bigram", bg_mask=masks[bigram], bg_opt=masks[optimal])
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = {m.label: m.value for m in at.metric}
    result, _ = analyse_mask_file(selection.resolve_choice(base, {}), bigram, corpus="zoo", optimal=optimal)
    from subnetviz.figures import format_number

    assert shown["r subnetwork"] == format_number(result.headline["r_subnetwork"])
    # No rounding hides a number: the random ablation's tiny Δ bits shows its digits, never "+0.000".
    assert shown["Δ bits/token, random set ablated"] == format_number(
        result.headline["delta_bits_random_ablated"], sign=True
    )
    assert shown["Δ bits/token, random set ablated"] not in ("+0.000", "0.000", "-0.000")
    assert shown["kept weights"] == f"{result.headline['kept']:,}"
    titles = _titles_per_tab(at, "bigram", "bg_tab", bg_mask=masks[bigram], bg_opt=masks[optimal])
    assert list(titles)[:2] == ["Ablation", "Location"] and "Overlap" in titles
    assert len(titles["Ablation"]) == 2 and [t.split("<br>")[0] for t in titles["Location"]] == [
        "Where the subnetwork lives"
    ]
    assert sum(len(t) for t in titles.values()) >= 5
    # importing a released pickle from outside the roots: refused under the importer, the analysis stays drawn
    at.text_input(key="bg_pickle").input("/etc/passwd").run()
    at.button(key="bg_import").click().run()
    assert not at.exception and len(at.main.error) == 1, [e.value for e in at.error]
    assert "outside the folders this server may read" in at.main.error[0].value and len(at.metric) == len(shown)


def test_pages_show_live_progress_of_a_queued_or_running_job(app_env):
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    rid = runner.submit(
        {
            "kind": "continual",
            "benchmark": "permuted-digits",
            "methods": ["supsup"],
            "density": [0.1],
            "tasks": 3,
            "seeds": [0, 1, 2, 3],
            "epochs": {"mask": 5, "weight": 5},
        },
        name="live",
    )
    try:
        at = open_page("continual")  # the job has no step yet (NaN in the registry): must not break the page
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any(p.proto.text.startswith(f"live · {rid}: ") for p in at.get("progress"))  # (named with its id)
        at = open_page("training", tr_view="Runs")
        assert not at.exception and not at.error
    finally:
        runner.cancel(rid)


def test_training_launch_refuses_a_base_outside_the_roots(app_env):
    at = open_page("training")
    at.text_input(key="tr_base").input("/etc")
    submit = next(b for b in at.button if "Launch" in b.label)
    submit.click().run()
    assert not at.exception
    assert [e.value for e in at.main.error if "outside the folders" in e.value]
    # said in the main area, under the form, which keeps what was typed
    assert at.text_input(key="tr_base").value == "/etc" and any(b.label == "Launch run" for b in at.button)


def test_a_random_control_without_a_mask_is_refused_not_queued_as_a_full_finetune(app_env):
    """ "random control mask" with "none (full finetune)": a full finetune was queued, with no word."""
    from subnetviz.jobs.runner import JobRunner

    before = len(JobRunner().list_runs())
    at = open_page("training")
    assert not at.selectbox(key="tr_mask").value.startswith("update") and at.selectbox(key="tr_mask").index == 0
    at.checkbox(key="tr_random").check()
    next(b for b in at.button if "Launch" in b.label).click().run()
    assert not at.exception and not at.success
    assert [e.value for e in at.main.error if "random control mask takes the density of a chosen mask" in e.value]
    assert len(JobRunner().list_runs()) == before


def test_a_run_trained_on_an_update_mask_names_a_copy_the_cache_cannot_remove(app_env):
    """The update mask lives in the analysis cache, which removes analyses over its size limit; a queued run
    named that file, and may start hours later. It names a kept copy (same bytes, provenance included)."""
    from subnetviz import config
    from subnetviz.cache import file_digest
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    before = set(runner.list_runs()["id"])
    at = open_page("training")
    label = next(o for o in at.selectbox(key="tr_mask").options if o.startswith("update mask of"))
    at.selectbox(key="tr_mask").set_value(label)
    next(b for b in at.button if "Launch" in b.label).click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    (rid,) = set(runner.list_runs()["id"]) - before
    try:
        mask = Path(runner.get(rid).config["mask"])
        assert config.cache_dir().resolve() not in mask.resolve().parents and mask.parent.name == "uploads"
        cached = [
            p for p in (config.cache_dir() / "updates").rglob("*.safetensors") if file_digest(p) == file_digest(mask)
        ]
        assert cached and mask.name.startswith("update-mask-of-")
    finally:
        runner.cancel(rid)


def test_a_diverged_run_says_so_on_its_card(app_env):
    """A run whose loss went NaN logged loss 0.0 (transformers' NaN filter) and read as a perfect run; its
    summary now counts the non-finite steps and the card says the run diverged."""
    import json
    import shutil

    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    runner, run_id = JobRunner(), "a-diverged-run"
    run_dir = add_finished_run(runner, run_id, "train", "diverged", {"kind": "train", "algorithm": "sft", "steps": 3})
    (run_dir / "outputs" / "model").mkdir(parents=True)
    summary = {"metrics": {"loss": float("nan")}, "nonfinite_steps": 3, "first_nonfinite_step": 1}
    (run_dir / "outputs" / "model" / "train_summary.json").write_text(json.dumps(summary))
    try:
        at = open_page("training", tr_view="Runs", tr_run=run_id)
        assert not at.exception
        assert [w.value for w in at.warning if "The run diverged" in w.value and "first at step 1" in w.value]
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir)


def test_sparsity_tabs_draw_only_the_open_section_and_are_shareable(app_env):
    at = open_page("sparsity", sp_tab="Tolerance sweep and ULPs")
    assert not at.exception and not at.error
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert len(titles) == 2 and "tolerance" in titles[0].lower() and "ULP" in titles[1]


def test_sparsity_views_follow_the_chosen_models_in_one_colour_each(app_env):
    """The sweep and ULP charts show the models chosen above, each in the colour of its bar on the first tab."""
    chosen = ["dpo", "sft"]  # not the first models of the workspace: their colours must not shift
    colours = {}
    for tab in ("Layers × modules", "Tolerance sweep and ULPs"):
        at = open_page("sparsity", sp_tab=tab, sp_models=chosen)
        assert not at.exception and not at.error
        for spec in plotly_specs(at):
            for trace in spec["data"]:
                if trace["type"] == "bar" and "name" not in trace:  # overall: one bar per model
                    for x, c in zip(trace["x"], trace["marker"]["color"], strict=True):
                        colours.setdefault(x, set()).add(c)
                elif trace["type"] != "heatmap":  # a model's line, its exact point ('dpo (exact)') or ULP bars
                    name = trace["name"].removesuffix(" (exact)")
                    colours.setdefault(name, set()).add((trace.get("line") or trace.get("marker") or {}).get("color"))
    assert set(colours) == set(chosen), colours
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours["dpo"] != colours["sft"]
    # the Spectra page draws each model's curves in that same colour
    at = open_page("spectra", spec_models=chosen, spec_module="q")
    assert not at.exception and not at.error
    curves = [t for t in plotly_specs(at)[0]["data"] if t.get("showlegend") is not False]
    drawn = {t["name"].split(" · ")[0]: t["line"]["color"] for t in curves}
    assert drawn == {m: colours[m].pop() for m in chosen}, drawn


def test_bigram_analysis_disk_cache_round_trips(app_env, tmp_path):
    import pandas.testing as pdt

    from subnetviz import config, selection
    from subnetviz.bigram.store import cached_mask_analysis
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    ids = [
        runner.submit(
            {
                "kind": "bigram_mask",
                "model": str(config.zoo_dir() / "base"),
                "corpus": "zoo",
                "target": t,
                "lambda": 10.0,
                "preset": "fast",
                "steps": 40,
                "seed": 1,
            }
        )
        for t in ("bigram", "optimal")
    ]
    paths = []
    for rid in ids:
        assert runner.wait(rid, timeout=300).status == "succeeded"
        paths.append(str(runner.get(rid).outputs / "mask.safetensors"))
    model = selection.resolve_choice(str(config.zoo_dir() / "base"), {})
    fresh, gens = cached_mask_analysis(model, paths[0], optimal=paths[1], cache_root=tmp_path)
    again, gens2 = cached_mask_analysis(model, paths[0], optimal=paths[1], cache_root=tmp_path)  # from disk
    assert len(list(tmp_path.iterdir())) == 1
    numbers = {k: v for k, v in fresh.headline.items() if k != "notes"}  # (notes: a list of lines)
    assert {k: v for k, v in again.headline.items() if k != "notes"} == pytest.approx(numbers)
    assert again.headline.get("notes") == fresh.headline.get("notes")
    pdt.assert_frame_equal(again.ablation.summary(), fresh.ablation.summary())
    pdt.assert_frame_equal(again.residual.rotation, fresh.residual.rotation)
    assert again.overlap.ratio_uniform == pytest.approx(fresh.overlap.ratio_uniform)
    assert np.array_equal(again.overlap.null_rows, fresh.overlap.null_rows)
    pdt.assert_frame_equal(gens2, gens)


def test_a_bigram_mask_under_the_paper_preset_trains_to_the_paper_s_step_cap(app_env):
    """The form always sent "Max steps" (3000 by default), which replaced the paper preset's 15,000: β reached only
    20 and the paper's stopping rule could not fire. Left empty, the run takes its preset's cap."""
    from subnetviz.bigram.config import PRESET_MAX_STEPS
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    before = set(runner.list_runs()["id"]) if len(runner.list_runs()) else set()
    at = open_page("bigram", bg_view="Train a mask")
    at.selectbox(key="bg_preset").set_value("paper")
    assert at.number_input(key="bg_steps").value is None
    next(b for b in at.button if b.label == "Train mask").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [r for r in runner.list_runs().itertuples() if r.id not in before]
    try:
        assert len(new) == 1 and runner.get(new[0].id).config["steps"] is None
        from subnetviz.bigram.train import PRESETS

        assert PRESET_MAX_STEPS == {k: v.max_steps for k, v in PRESETS.items()} and PRESET_MAX_STEPS["paper"] == 15000
    finally:
        for r in new:
            runner.cancel(r.id)


def test_a_continual_run_left_at_the_form_s_epochs_takes_the_benchmark_s(app_env):
    """The form always sent 10 / 10 / 20 epochs, replacing split-digits' 30 / 30 / 60; left empty, the run takes
    its benchmark's own."""
    from subnetviz.jobs.runner import JobRunner

    runner = JobRunner()
    before = set(runner.list_runs()["id"]) if len(runner.list_runs()) else set()
    at = open_page("continual", cl_view="Launch")
    (epochs,) = [n for n in at.number_input if n.label.startswith("Epochs per phase")]
    assert epochs.value is None
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [r for r in runner.list_runs().itertuples() if r.id not in before]
    try:
        assert len(new) == 1
        assert runner.get(new[0].id).config["epochs"] == {"mask": None, "weight": None, "finetune": None}
        # named as the page writes densities (the name held a Python list: "d=[0.05]")
        assert runner.get(new[0].id).name == "permuted-digits: finetune/supsup/ssnet/exssnet, d=5 %, T=5"
    finally:
        for r in new:
            runner.cancel(r.id)


def test_bigram_mask_runs_are_picked_by_name_and_drawn_in_percent(app_env):
    """Train a mask: the run picker names each run (not only its id), and its curves draw the kept and the
    undecided share both in percent (undecided was a fraction beside kept in %)."""
    import json
    import shutil
    from urllib.parse import parse_qs

    import torch

    from subnetviz.jobs.context import METRICS_FILE
    from subnetviz.jobs.runner import JobRunner
    from subnetviz.masks import MaskSet, save_mask_set
    from tests.app_fixtures import add_finished_run

    runner = JobRunner()
    run_id = "mask-run-by-hand"
    cfg = {"kind": "bigram_mask", "target": "optimal", "lambda": 10.0, "preset": "fast", "steps": None, "seed": 0}
    run_dir = add_finished_run(runner, run_id, "bigram_mask", "optimal mask λ=10", cfg)
    rows = [{"step": s, "loss": 3.0 - s, "kept": k, "undecided": u} for s, k, u in [(0, 0.5, 1.0), (1, 0.1, 0.25)]]
    run_dir.mkdir(parents=True)
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    mask = MaskSet({"w": torch.ones(2, 2, dtype=torch.bool)}, {"target": "optimal", "lambda": 10.0})
    save_mask_set(run_dir / "outputs" / "mask.safetensors", mask)
    try:
        at = open_page("bigram", bg_view="Train a mask")
        card = open_page("training", tr_view="Runs", tr_run=run_id)
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir)
    assert not at.exception and not at.error, [e.value for e in at.error]
    picker = at.selectbox(key="bg_run")
    assert picker.options[0] == f"optimal mask λ=10 · {run_id}" and picker.value == run_id
    # the runs listed as on the Training page (progress, times), without the kind: all are mask runs
    (runs,) = [d.value for d in at.dataframe if "progress" in d.value.columns]
    assert list(runs.columns) == ["id", "name", "status", "progress", "step", "total", "created", "ended", "error"]
    (row,) = runs[runs["id"] == run_id].itertuples()
    assert row.progress == 1.0 and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", row.created)  # date and zone
    (spec,) = [s for s in plotly_specs(at) if s["layout"]["title"]["text"] == f"Run optimal mask λ=10 · {run_id}"]
    ys = {t["yaxis"]: list(decode(t["y"])) for t in spec["data"]}
    assert ys["y2"] == pytest.approx([50.0, 10.0]) and ys["y3"] == pytest.approx([100.0, 25.0])  # kept, undecided
    assert [a["text"] for a in spec["layout"]["annotations"]][2] == "undecided (%)"
    # Its card on the Training page: no unset setting ("steps None"), and a link that picks its mask on the
    # Bigram page, in the picker its target belongs to (an optimal mask is the one compared with).
    assert not card.exception and not card.error, [e.value for e in card.error]
    line = next(c.value for c in card.caption if c.value.startswith("bigram\\_mask job"))
    assert "steps" not in line and "preset fast" in line, line
    (link,) = [e.proto for e in card.get("page_link")]
    assert link.page.endswith("bigram") and parse_qs(link.query_string) == {"bg_opt": [f"optimal mask λ=10 · {run_id}"]}


def test_bigram_page_follows_a_mask_rewritten_under_the_same_path(app_env):
    """Regression: the page's memory cache took the file's stamp as ``_stamp``, which st.cache_* does
    not hash, so a mask saved again under the same name was answered with the old mask's numbers."""
    import torch

    from subnetviz import config
    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    model = load_local_model(config.zoo_dir() / "base")
    path = config.home() / "uploads" / "rewritten.safetensors"
    shown = []
    for density in (0.2, 0.6):
        g = torch.Generator().manual_seed(int(10 * density))
        ms = MaskSet({n: torch.rand(m.shape, generator=g) < density for n, m in full_mask(model).masks.items()})
        save_mask_set(path, ms)
        at = open_page("bigram", bg_mask="uploads/rewritten")
        assert not at.exception and not at.error, [e.value for e in at.error]
        shown.append(({m.label: m.value for m in at.metric}["kept weights"], ms.count))
    for value, count in shown:
        assert value == f"{count:,}", (value, count)


def test_training_comparison_follows_a_model_rewritten_under_the_same_path(app_env, monkeypatch):
    """Regression: the page cached the comparison on the folders' paths only, so a run folder whose
    model was replaced (a rerun into the same place) kept showing the old comparison."""
    import shutil

    from subnetviz.analysis.runs import compare_runs
    from subnetviz.demo import load_zoo
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setenv("SUBNETVIZ_ALLOW_TEST_JOBS", "1")
    zoo, runner = load_zoo(), JobRunner()
    rid = runner.submit(
        {"kind": "python", "target": "tests.zoo_fixtures:copy_model_job", "source": str(zoo.member_path("grpo-s1"))}
    )
    rec = runner.wait(rid, timeout=120)
    assert rec.status == "succeeded", rec.error
    model = rec.outputs / "model"
    full = zoo.member_path("grpo-s0")
    for member in ("grpo-s1", "grpo-s2"):
        weights = model / "model.safetensors"
        shutil.copyfile(zoo.member_path(member) / "model.safetensors", weights)  # rewritten in place
        at = open_page("training", tr_view="Subnetwork vs full", cmp_full="zoo grpo-s0", cmp_sub=f"run python · {rid}")
        assert not at.exception and not at.error, [e.value for e in at.error]
        picked = at.selectbox(key="cmp_sub")
        assert picked.value == f"run python · {rid}", picked.options  # the run the URL names, by its name
        shown = {m.label: m.value for m in at.metric}["parameters bitwise identical"]
        assert shown == f"{100 * compare_runs(full, model).share_identical:.2f} %", member


def test_run_models_are_named_and_listed_once(app_env):
    """The comparison pickers name a run's model ("run name · id", not only the id), and neither they nor the
    sidebar list a zoo member twice: the demo build registers each member's training as a run whose model
    links to the member's folder (that listed both "zoo grpo-s0" and "run zoo-…-grpo-s0-…")."""
    import shutil

    from subnetviz import config
    from subnetviz.demo import load_zoo
    from subnetviz.demo.extras import register_member_runs
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    zoo, runner = load_zoo(), JobRunner()
    members = register_member_runs(zoo, runner)  # links, as `demo build` makes them
    own = "own-rerun-of-grpo-s1"  # a run's own model: a copy, listed under its name
    run_dir = add_finished_run(runner, own, "train", "grpo s1 rerun")
    shutil.copytree(zoo.member_path("grpo-s1"), run_dir / "outputs" / "model")
    try:
        at = open_page("training", tr_view="Subnetwork vs full")
    finally:  # the app home is shared by the module's other tests: leave its runs as they were
        ids = [own, *members.values()]
        with runner.registry.transaction() as con:
            con.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
        for i in ids:
            shutil.rmtree(config.runs_dir() / i)
    assert not at.exception and not at.error, [e.value for e in at.error]
    options = at.selectbox(key="cmp_full").options
    assert f"run grpo s1 rerun · {own}" in options, options
    assert sorted(o for o in options if o.startswith("zoo ")) == sorted(f"zoo {m.id}" for m in zoo.members)
    sidebar = at.multiselect(key="ft").options
    assert f"run {own}" in sidebar and set(members.values()).isdisjoint({o.split()[-1] for o in sidebar})
    assert not any(i in o for o in options for i in members.values()), options  # no member a second time


def test_training_comparison_is_bitwise_first_and_accuracy_on_request(app_env):
    """First open shows the bitwise comparison without generating with both models; the toggle (in the URL) adds accuracy."""
    at = open_page("training", tr_view="Subnetwork vs full")
    assert not at.exception and not at.error
    assert "parameters bitwise identical" in {m.label for m in at.metric}
    assert len(at.dataframe) == 1 and at.toggle(key="cmp_acc").value is False
    at = open_page("training", tr_view="Subnetwork vs full", cmp_acc="true")
    assert not at.exception and at.toggle(key="cmp_acc").value is True
    assert len(at.dataframe) == 2  # + held-out accuracy of both models


def test_relative_criterion_follows_its_eta(app_env):
    """The η control recomputes the relative criterion: the heatmap at η = 0.01 equals a float64 NumPy count
    of |Δ| > η·max(|w|, |w'|) on the stored bf16 values, per layer × module, and differs from exact."""
    from subnetviz.analysis.updates import analyze_updates
    from subnetviz.demo.build import load_zoo
    from tests.zoo_fixtures import read_bits

    at = open_page("sparsity", sp_crit="relative", sp_eta="0.01", sp_models=["grpo-s0"])
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.select_slider(key="sp_eta").value == "0.01"
    heat = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap")
    z = decode(heat["data"][0]["z"]).astype(float)

    zoo = load_zoo()
    members = {m.id: m.path for m in zoo.members}
    table = analyze_updates(members["base"], [members["grpo-s0"]], labels=["grpo-s0"]).reports[0].tensors
    base, ft = read_bits(members["base"]), read_bits(members["grpo-s0"])

    def f64(bits):  # bf16 bit patterns -> float64, exactly
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    cells: dict[tuple, list[int]] = {}
    exact_changed = 0
    for row in table[table["layer"].notna()].itertuples():
        w, w2 = f64(base[row.name]), f64(ft[row.name])
        changed = int((np.abs(w2 - w) > 0.01 * np.maximum(np.abs(w), np.abs(w2))).sum())
        exact_changed += int((base[row.name] != ft[row.name]).sum())
        c = cells.setdefault((row.layer, row.module), [0, 0])
        c[0], c[1] = c[0] + changed, c[1] + w.size
    expected = np.array([100 * (1 - c / n) for c, n in cells.values()])
    assert np.allclose(np.sort(z[np.isfinite(z)]), np.sort(expected))
    assert sum(c for c, _ in cells.values()) < exact_changed  # η = 0.01 leaves out small relative changes


def test_consensus_table_holds_the_chance_counts_of_its_chart(app_env):
    """The consensus table gives, beside each k's count, what independent masks would give and the ratio: per
    tensor, at each tensor's own densities (the chart's chance markers; in no mask: Σₜ nₜ·Π(1 − pₜ); in all:
    Σₜ nₜ·Π pₜ), and global, at each mask's density over the model (Π(1 − p), Π p)."""
    masks = ["Δ grpo-s0", "Δ grpo-s1", "Δ dpo"]
    at = open_page("overlap", ov_masks=masks, ov_tab="Consensus")
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "expected_count_per_tensor" in d.value.columns)
    numel, p = _changed_shares(["grpo-s0", "grpo-s1", "dpo"])
    glob = table.set_index("k")["expected_count_global"]
    assert glob.sum() == pytest.approx(numel)
    assert glob[0] == pytest.approx(numel * np.prod(1 - p)) and glob[3] == pytest.approx(numel * np.prod(p))
    sizes, shares = _changed_shares(["grpo-s0", "grpo-s1", "dpo"], per_tensor=True)
    per = table.set_index("k")["expected_count_per_tensor"]
    assert per.sum() == pytest.approx(numel)
    assert per[0] == pytest.approx(float(np.sum(sizes * np.prod(1 - shares, axis=1))), rel=1e-9)
    assert per[3] == pytest.approx(float(np.sum(sizes * np.prod(shares, axis=1))), rel=1e-9)
    np.testing.assert_allclose(table["ratio_over_chance_global"], table["count"] / table["expected_count_global"])
    np.testing.assert_allclose(
        table["ratio_over_chance_per_tensor"], table["count"] / table["expected_count_per_tensor"]
    )
    assert table["count"].sum() == numel
    (chart,) = [s for s in plotly_specs(at) if s["data"][0]["type"] == "bar"]
    marks = [t for t in chart["data"] if t["type"] == "scatter"]
    assert marks[0]["name"].startswith("per-tensor chance")
    np.testing.assert_allclose(decode(marks[0]["y"]), per.loc[[k for k in per.index if k > 0]], rtol=1e-9)


def _changed_shares(models: list[str], per_tensor: bool = False) -> tuple:
    """(numel, each model's share of entries whose bits differ from the base's), read from the zoo's files
    with safetensors and torch, independently of the analysis. ``per_tensor``: (each tensor's numel (T,),
    each tensor's share per model (T, models)) instead."""
    import torch
    from safetensors.torch import load_file

    from subnetviz.demo.build import load_zoo

    members = {m.id: Path(m.path) for m in load_zoo().members}
    base = {k: v for f in sorted(members["base"].glob("*.safetensors")) for k, v in load_file(f).items()}
    numel = sum(v.numel() for v in base.values())
    sizes = np.array([v.numel() for v in base.values()], dtype=np.float64)
    shares = []
    for model in models:
        ft = {k: v for f in sorted(members[model].glob("*.safetensors")) for k, v in load_file(f).items()}
        bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        changed = [
            int((v.view(bits[v.element_size()]) != ft[k].view(bits[v.element_size()])).sum()) for k, v in base.items()
        ]
        shares.append(np.array(changed) / sizes if per_tensor else sum(changed) / numel)
    if per_tensor:
        return sizes, np.stack(shares, axis=1).astype(np.float64)
    return numel, np.array(shares, dtype=np.float64)


def test_per_layer_chart_names_its_pair(app_env):
    """The per-layer heatmap's title names the pair it shows (the export and the paper figure carry no picker)."""
    at = open_page("overlap", ov_masks=["Δ grpo-s0", "Δ dpo", "Δ sft"], ov_tab="Per layer", ov_pair="Δ dpo ∩ Δ sft")
    assert not at.exception and not at.error
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert titles == ["Jaccard by layer and module<br><sup>Δ dpo ∩ Δ sft</sup>"], titles


def test_a_label_holding_the_pair_sign_opens_its_per_layer_view(app_env, typed_options):
    """A finetune folder named "x ∩ y" (any name from a folder or mask): the Per layer tab split the pair's text
    on " ∩ " and showed a bug notice (ValueError), and the export lost every closed tab."""
    import shutil

    from subnetviz.demo.build import load_zoo

    members = {m.id: m.path for m in load_zoo().members}
    odd = Path(app_env) / "uploads" / "x ∩ y"
    odd.parent.mkdir(parents=True, exist_ok=True)
    if not odd.exists():
        shutil.copytree(members["sft"], odd)
    at = open_page("overlap", ft=[str(odd), "grpo-s0"], ov_tab="Per layer")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (title,) = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert title.endswith("<sup>Δ x ∩ y ∩ Δ grpo-s0</sup>"), title


def test_workspace_series_names_its_checkpoints(app_env):
    """A series of the sidebar's checkpoints (not one run) names each checkpoint on the axis and in the table,
    and its title does not say training."""
    at = open_page("series", series_src="workspace: base → finetuned in sidebar order")
    assert not at.exception and not at.error
    labels = at.multiselect(key="ft").value  # the sidebar's finetuned checkpoints, in order
    table = next(d.value for d in at.dataframe if "step" in d.value.columns)
    # named as on the chart: sparsity against the base (not "vs_first", beside a count "changed_vs_first");
    # not one run: nothing came "back to the start", an earlier checkpoint changed what the base still holds
    assert list(table.columns[2:]) == [
        "sparsity_vs_base",
        "sparsity_vs_previous",
        "changed_vs_base",
        "changed_vs_previous",
        "changed_earlier_equal_to_base_share",
    ]
    spec = next(s for s in plotly_specs(at) if "Checkpoint series" in s["layout"]["title"]["text"])
    assert "training" not in spec["layout"]["title"]["text"]
    ticks = spec["layout"]["xaxis"]["ticktext"]
    assert list(table["checkpoint"]) == ticks[1:] == labels and ticks[0] == "base"


def test_norms_tab_names_the_criterion_its_bars_count_under(app_env):
    """The norms / embeddings / head bars count under the criterion chosen above, and the title names it
    (tests/app/test_wsexp9_fixes_app.py checks the counts against float64 NumPy)."""
    at = open_page("sparsity", sp_tab="Norms, embeddings, head", sp_crit="1e-05", sp_models=["dpo"])
    assert not at.exception and not at.error
    (spec,) = plotly_specs(at)
    assert spec["layout"]["title"]["text"].endswith("(tol = 1e-05)")
    assert [t["name"] for t in spec["data"]] == ["dpo"]  # the model chosen above, not every model


def test_a_folder_named_in_markup_is_text_on_every_chart(app_env):
    """A checkpoint's folder name (its label) is someone else's text: Plotly reads <i>, <a href>, <br> and
    &-entities in titles, ticks, legends and hovers, and fills "%{y}" in a hover. On each page that names the
    models in its charts, the label shows as typed (escaped once) and never as markup."""
    import json
    import shutil

    from tests.unit.test_figures import _strings

    hostile, shown = "dpo<i>x<|i> & %{y}", "dpo&lt;i&gt;x&lt;|i&gt; &amp; %&#123;y}"  # a name holds no "/"
    from safetensors.torch import load_file, save_file

    folder = app_env / "tmp-markup-label"
    folder.mkdir(exist_ok=True)
    # the DPO finetune with one matrix's update a single row (rank 1), so the rank caption names a matrix below
    # full rank whatever rank the zoo's own training left (it depends on the machine's float kernels)
    shutil.copytree((app_env / "zoo" / "dpo").resolve(), folder / hostile)
    sd = load_file(str(folder / hostile / "model.safetensors"))
    base = load_file(str((app_env / "zoo" / "base" / "model.safetensors").resolve()))
    name = next(k for k in sd if k.endswith("layers.0.self_attn.q_proj.weight"))
    sd[name] = base[name].clone()
    sd[name][0] *= 2  # (exact in any float dtype)
    save_file(sd, str(folder / hostile / "model.safetensors"), metadata={"format": "pt"})
    try:
        ft = ["grpo-s0", str(folder / hostile)]
        pages = {
            "sparsity": {"sp_models": ["grpo-s0", hostile]},
            "spectra": {"spec_models": [hostile], "spec_view": "Effective and stable rank"},
            "overlap": {"ov_masks": ["Δ grpo-s0", f"Δ {hostile}"], "ov_tab": "Per layer"},
        }
        for page, query in pages.items():
            at = open_page(page, ft=ft, **query)
            assert not at.exception and not at.error, (page, [e.value for e in at.error])
            texts = _strings([json.loads(el.proto.spec) for el in at.get("plotly_chart")])
            assert texts, page
            assert not [t for t in texts if "<i>" in t], page
            assert any(shown in t for t in texts), page
            assert not [t for t in texts if "&amp;lt;" in t], page  # escaped once
            # and in the page's Markdown (captions, notes): escaped, never rendered (before: the spectra rank
            # view's caption listed the matrices below full rank as raw Markdown)
            kinds = ("caption", "markdown", "info", "warning", "success", "error", "title", "header", "subheader")
            md = [str(el.value) for kind in kinds for el in getattr(at, kind)]
            assert not [v for v in md if "dpo<i>" in v or "& %{y}" in v], page
            if page == "spectra":
                assert any("dpo\\<i\\>x" in v for v in md), md  # the caption does name it
    finally:
        shutil.rmtree(folder)


# Parameters a page reads from the URL by hand (in a live fragment, or for the closed tabs an export holds):
# page -> (the view that reads it, the parameter).
HAND_READ = [
    ("training", {}, "tr_view"),
    ("training", {"tr_view": "Runs"}, "tr_smooth"),
    ("training", {"tr_view": "Runs"}, "tr_run"),
    ("training", {"tr_view": "Subnetwork vs full"}, "cmp_full"),
    ("spectra", {}, "sub_k"),
    ("spectra", {}, "sub_model"),
    ("spectra", {"spec_tab": "Subspaces"}, "spec_models"),
    ("overlap", {"ov_tab": "Per layer"}, "ov_pair"),
]


@pytest.mark.parametrize(("page", "view", "key"), HAND_READ, ids=[f"{p}-{k}" for p, _, k in HAND_READ])
def test_a_shared_url_with_any_value_opens_the_page(app_env, page, view, key):
    """A shared URL is a stranger's text: "tr_smooth=abc" ended in "Something went wrong inside subnetviz
    (ValueError). This is a bug", "tr_view=" in a KeyError, "sub_k=1e309" in a ValueError; an absurd K went
    to the decomposition as asked. The page opens on its default instead."""
    import json
    import shutil

    from subnetviz.jobs.context import METRICS_FILE
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    runner, run_id = JobRunner(), "run-with-a-curve"  # the Runs view draws its smoothing slider for a curve
    run_dir = add_finished_run(runner, run_id, "train", "a run with a loss curve")
    run_dir.mkdir(parents=True)
    (run_dir / METRICS_FILE).write_text("".join(json.dumps({"step": s, "loss": 3.0 - s}) + "\n" for s in range(3)))
    try:
        for value in ("abc", "", "1e309", "-1", "99999999999"):
            at = open_page(page, **{**view, "tr_run": run_id, key: value})
            assert not at.exception, (value, [e.message for e in at.exception])
            assert not at.error, (value, [e.value for e in at.error])
        if key == "tr_smooth":
            assert [s.value for s in at.slider] == [0.95]  # 99999999999: the slider's end
    finally:
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir)


def test_a_peft_adapter_is_a_finetune_on_the_sparsity_page(app_env):
    """A LoRA adapter saved by PEFT (q/v projections and the embedding, trained in float32 on the bf16 zoo
    base) given as a finetune: the page compares it beside a full finetune, no error (before: 'cannot
    reshape array', the embedding PEFT saves in float32 read as bf16), and only the adapted modules moved."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = app_env / "tmp-lora"
    model = AutoModelForCausalLM.from_pretrained(str(app_env / "zoo" / "base"), dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=r".*\.(q_proj|v_proj|embed_tokens)")
    get_peft_model(model, lora).save_pretrained(folder)
    try:
        at = open_page("sparsity", ft=["grpo-s0", str(folder)], sp_models=["grpo-s0", folder.name])
        assert not at.exception and not at.error, [e.value for e in at.error]
        bars, _, heat = (spec["data"][0] for spec in plotly_specs(at))
        assert list(bars["x"]) == ["grpo-s0", folder.name] and 0 < decode(bars["y"])[1] < 100
        sparsity = dict(zip(heat["x"], decode(heat["z"]).astype(float).T, strict=True))  # module kind -> layers
        assert {k for k, v in sparsity.items() if (v < 100).any()} == {"q", "v"}
    finally:
        shutil.rmtree(folder)


def test_an_unreadable_checkpoint_does_not_hide_the_workspace(app_env):
    """One finetune whose config.json cannot be read: the Workspace still lists every checkpoint (that one
    as 'cannot be read', its reason under the table) and compares the others (before: one error, and no
    table at all)."""
    import shutil

    folder = app_env / "tmp-broken"
    shutil.copytree(app_env / "zoo" / "dpo", folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    try:
        at = open_page("workspace", ft=["grpo-s0", str(folder)])
        assert not at.exception
        said = [e.value.replace("\\", "").replace("\u200b", "") for e in at.error]  # shown as text: escaped
        assert len(said) == 1 and said[0].startswith("tmp-broken: config.json in ")
        assert said[0].endswith("tmp-broken: JSON nested too deeply to read.")
        table = at.dataframe[0].value
        assert list(table["label"]) == ["base", "grpo-s0", "tmp-broken"]
        assert list(table["architecture"])[2] == "cannot be read"
        assert [m.label for m in at.metric] == ["grpo-s0"]
    finally:
        shutil.rmtree(folder)

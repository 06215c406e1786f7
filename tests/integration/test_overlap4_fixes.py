"""Overlap review 4, checked against float64 NumPy on planted masks (files_overlap_task: the Overlap page's own call):

1. The page's naming table comes from every chosen mask's names, not only the shared ones, and the MLP's own names
   tell a family: a mask of the MLP alone (beside a full mask, or beside another like it) keeps its gate / up /
   down cells (they were one 'other' cell per layer, unsaid). Where no table is chosen, the page says so in the
   table's words, and only a tensor named as an embedding or LM head shares rows: an MLP of another width is left
   out, not compared over its leading rows as "a resized vocabulary" (two models' different neurons).
2. The export of saved masks lists only the parameters that are theirs: no base, no criterion.
3. The CLI report's consensus table holds the global chance its caption promises: expected count and × chance per k.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch

from subnetviz.analysis.overlap import mask_overlap
from subnetviz.checkpoints.naming import NameTable, detect_family
from subnetviz.jobs.cluster_pages import files_overlap_task
from subnetviz.masks import MaskSet, save_mask_set
from tests.app_fixtures import open_page
from tests.integration.test_overlap_inputs import upload_home  # noqa: F401 - a fixture

H, F, V = 12, 20, 33  # hidden, FFN and vocabulary sizes: none a multiple of 8


def llama(inter: int = F, layers: int = 2) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {f"{p}self_attn.{x}_proj.weight": (H, H) for x in "qkvo"}
        shapes |= {f"{p}mlp.gate_proj.weight": (inter, H), f"{p}mlp.up_proj.weight": (inter, H)}
        shapes |= {f"{p}mlp.down_proj.weight": (H, inter)}
        shapes |= {f"{p}input_layernorm.weight": (H,), f"{p}post_attention_layernorm.weight": (H,)}
    return shapes


def planted(shapes: dict, seed: int) -> dict[str, np.ndarray]:
    """Each tensor at a density of its own (0.05 .. 0.9)."""
    rng = np.random.default_rng(seed)
    return {n: rng.random(s) < rng.uniform(0.05, 0.9) for n, s in shapes.items()}


def save(folder, name: str, masks: dict[str, np.ndarray]) -> str:
    path = folder / f"{name}.safetensors"
    save_mask_set(path, MaskSet({n: torch.from_numpy(v) for n, v in masks.items()}))
    return str(path)


def module_of(name: str) -> str:
    """A Llama tensor's module kind, by hand."""
    part = name.split(".")[-2]
    return KIND.get(part, part.removesuffix("_proj"))


def cells(report) -> dict[tuple, tuple[int, int, int, int]]:
    """(layer, module) -> (|A|, |B|, |A∩B|, n) of the report's one pair."""
    return {
        r.group: (r.count_a, r.count_b, r.intersection, r.numel)
        for r in report.by_group.itertuples()
        if isinstance(r.group, tuple)
    }


def want_cells(a: dict, b: dict, names) -> dict[tuple, tuple[int, int, int, int]]:
    out: dict[tuple, list[int]] = {}
    for n in names:
        x, y = a[n].astype(np.float64), b[n].astype(np.float64)
        layer = int(n.split(".")[2]) if ".layers." in n else None
        c = out.setdefault((layer, module_of(n)), [0, 0, 0, 0])
        for k, v in enumerate((x.sum(), y.sum(), (x * y).sum(), x.size)):
            c[k] += int(v)
    return {k: tuple(v) for k, v in out.items()}


MLP = [f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")]
NORMS = [n for n in llama() if n.endswith("norm.weight")]
KIND = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm", "norm": "final_norm"}


# --- 1: the naming table of every chosen mask's names; MLP telltales -------------------------------------------------
@pytest.mark.parametrize(
    ("kept", "modules"),
    [
        (MLP, {"gate", "up", "down"}),  # masked training of the MLP alone
        (NORMS, {"attn_norm", "mlp_norm", "final_norm"}),  # LayerNorm tuning: no name of them tells a family
    ],
)
def test_a_mask_of_some_modules_beside_a_full_one_keeps_their_module_kinds(tmp_path, kept, modules):
    """B holds some modules' tensors only: the table was built from the names both hold, none of them an attention
    name, so every kind was one 'other' cell per layer (norms) or was read by the MLP's names only (the MLP); now
    the full mask's names tell the family."""
    a, b = planted(llama(), 0), planted(llama(), 1)
    b = {n: b[n] for n in kept}
    ov = files_overlap_task([save(tmp_path, "A", a), save(tmp_path, "B", b)], ["A", "B"])
    assert cells(ov.report) == want_cells(a, b, kept)
    assert {m for _, m in cells(ov.report)} == modules
    assert not any("Unknown architecture" in n for n in ov.notes), ov.notes


@pytest.mark.parametrize("norms", [False, True])
def test_masks_of_the_mlp_alone_are_read_by_its_names(tmp_path, norms):
    """Two masks of the MLP alone (and its norms): no attention name anywhere; mlp.gate_proj tells Llama's table."""
    keep = [n for n in llama() if n in MLP or (norms and "layernorm" in n)]
    a, b = ({n: m[n] for n in keep} for m in (planted(llama(), 2), planted(llama(), 3)))
    ov = files_overlap_task([save(tmp_path, "a", a), save(tmp_path, "b", b)], ["a", "b"])
    got = cells(ov.report)
    want = want_cells(a, b, MLP)
    assert {k: v for k, v in got.items() if k[1] in ("gate", "up", "down")} == want
    if norms:  # input_layernorm before attention, post_attention_layernorm before the MLP (Llama's table)
        assert {k[1] for k in got} == {"gate", "up", "down", "attn_norm", "mlp_norm"}


def test_mlp_telltales_tell_only_where_nothing_else_does():
    """MLP names tell the table that reads them as their own family does; names that told a family before still
    tell it (the MLP tells come last), and EXAONE's c_fc_0 (its gate) is no GPT-2 c_fc."""
    assert detect_family(None, ["model.layers.0.mlp.down_proj.weight"]) == "llama"
    assert detect_family(None, ["transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]) == "gpt2"
    assert detect_family(None, ["model.layers.0.mlp.gate_up_proj.weight"]) == "phi3"
    assert detect_family(None, ["transformer.h.0.mlp.c_fc_0.weight"]) is None
    both = ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.pre_feedforward_layernorm.weight"]
    assert detect_family(None, both) == "gemma2"
    assert detect_family(None, ["model.layers.0.mlp.experts.0.gate_proj.weight", *both[:1]]) == "qwen_moe"
    phi = NameTable.from_config({}, ["model.layers.0.mlp.gate_up_proj.weight"])
    halves = phi.fused_parts("model.layers.0.mlp.gate_up_proj.weight", torch.zeros(2 * F, H, dtype=torch.bool))
    assert set(halves) == {"gate", "up"} and halves["gate"].shape == (F, H)


def test_a_width_pruned_mlp_is_left_out_not_compared_as_a_vocabulary(tmp_path):
    """MLP + norms of two models of FFN 20 and 16 (hidden 12 both): gate_proj / up_proj (20 vs 16 rows) were compared
    over their first 16 rows as a "resized vocabulary" (no table read the names). They are left out; the norms,
    one shape in both, are compared."""
    keep = [n for n in llama() if ".mlp." in n or "layernorm" in n]
    a = {n: planted(llama(), 4)[n] for n in keep}
    b = {n: planted(llama(inter=16), 5)[n] for n in keep}
    ov = files_overlap_task([save(tmp_path, "P", a), save(tmp_path, "Q", b)], ["P", "Q"])
    norms = [n for n in keep if "layernorm" in n]
    fa, fb = (np.concatenate([m[n].reshape(-1) for n in norms]).astype(np.float64) for m in (a, b))
    (row,) = ov.report.pairwise.itertuples()
    assert (row.count_a, row.count_b, row.intersection, row.numel) == (fa.sum(), fb.sum(), (fa * fb).sum(), fa.size)
    assert set(ov.report.tensor_names) == set(norms)
    said = " ".join(ov.notes)
    assert "shared leading rows" not in said and "Left out of the overlap" in said and "mlp.gate_proj" in said


# names no family's table reads: an embedding by its module's name, an FFN of another width, attention of one shape
BLIND = {"emb.weight": ((10, 4), (12, 4)), "blk.0.ffn.w1.weight": ((F, H), (16, H)), "blk.0.attn.wq.weight": ((H, H),)}


def _blind_masks(seed: int = 6):
    rng = np.random.default_rng(seed)
    a = {n: rng.random(s[0]) < 0.4 for n, s in BLIND.items()}
    b = {n: rng.random(s[-1]) < 0.6 for n, s in BLIND.items()}
    want = (a["blk.0.attn.wq.weight"] & b["blk.0.attn.wq.weight"]).sum() + (
        a["emb.weight"] & b["emb.weight"][:10]
    ).sum()
    return a, b, int(want), H * H + 10 * 4


def test_with_no_naming_table_only_an_embedding_shares_rows_and_the_page_says_no_table_reads_the_names(tmp_path):
    """No family: the FFN's 20 vs 16 rows were compared as a vocabulary's (any tensor whose first dimension alone
    differed was), and the 'Unknown architecture' notice (every module 'other') never reached the page."""
    a, b, inter, numel = _blind_masks()
    ov = files_overlap_task([save(tmp_path, "a", a), save(tmp_path, "b", b)], ["a", "b"])
    (row,) = ov.report.pairwise.itertuples()
    assert (row.intersection, row.numel) == (inter, numel)
    assert set(ov.report.tensor_names) == {"emb.weight", "blk.0.attn.wq.weight"}
    said = " ".join(ov.notes)
    assert "Unknown architecture (these tensor names)" in said and "module kinds are 'other'" in said, said
    assert "emb.weight (a: (10, 4), b: (12, 4): the first 10 rows, 40 entries)" in said
    assert "Left out of the overlap" in said and "blk.0.ffn.w1.weight (a: (20, 12), b: (16, 12))" in said
    # mask_overlap's own default (the table of the names, no family) keeps the same rule
    rep = mask_overlap(
        [{n: torch.from_numpy(v) for n, v in m.items()} for m in (a, b)], ["a", "b"], other_shapes="skip"
    )
    assert rep.pairwise["intersection"].item() == inter and rep.numel == numel


# --- page checks (AppTest) -------------------------------------------------------------------------------------------
# (a home of its own with an uploads/ folder: test_overlap_inputs' fixture)


def _export_text(exports) -> str:
    page = exports["Overlap"]()
    page = page.decode() if isinstance(page, bytes) else page
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_the_page_and_its_export_say_no_naming_table_reads_the_names(upload_home, exports):  # noqa: F811
    a, b, inter, numel = _blind_masks()
    chosen = []
    for k, m in (("a", a), ("b", b)):
        save(upload_home / "uploads", k, m)
        chosen.append(f"uploads/{k}")
    at = open_page("overlap", masks=chosen, ov_masks=chosen, ov_tab="Pairwise")
    assert not at.exception and not at.error, [e.value for e in at.error]
    texts = " ".join(re.sub(r"\\(.)", r"\1", e.value) for e in [*at.caption, *at.info, *at.warning])
    assert "Unknown architecture (these tensor names)" in texts, texts
    table = next(d.value for d in at.dataframe if {"count_a", "intersection"} <= set(d.value.columns))
    assert (table["intersection"].item(), table["numel"].item()) == (inter, numel)
    text = _export_text(exports)
    assert "Unknown architecture (these tensor names)" in text


# --- 2: the export of saved masks names no base and no criterion -----------------------------------------------------
def _params(page: str) -> dict[str, str]:
    """The export's "Parameters" table (the header's), as text."""
    table = re.search(r'<table class="params"><caption>Parameters</caption>(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table, re.S)
    return {html.unescape(k): html.unescape(v) for k, v in rows}


def test_the_export_of_saved_masks_lists_only_their_parameters(upload_home, exports, typed_options):  # noqa: F811
    """A base chosen in the sidebar (no finetuned checkpoint: no update mask to choose), two saved masks: the
    export said base=... and criterion=exact, which are no saved mask's (their precision was left out already)."""
    from tests.ckpt_fixtures import llama64, write_folder

    model = llama64()
    base = write_folder(upload_home / "base", model.state_dict())
    (base / "config.json").write_text(model.config.to_json_string())
    chosen = []
    for k, seed in (("a", 7), ("b", 8)):
        save(upload_home / "uploads", k, planted(llama(), seed))
        chosen.append(f"uploads/{k}")
    at = open_page("overlap", base=str(base), masks=chosen, ov_masks=chosen, ov_tab="Sets")
    assert not at.exception and not at.error, [e.value for e in at.error]
    page = exports["Overlap"]()
    params = _params(page.decode() if isinstance(page, bytes) else page)
    assert at.selectbox(key="base").value == str(base)  # (the sidebar holds a base: the export named it)
    assert params["masks"] == json.dumps(chosen) and params["view"] == "values"
    assert not {"base", "criterion", "precision"} & set(params), params


def test_the_export_of_update_masks_still_names_base_criterion_and_precision(app_env, exports):
    at = open_page("overlap", ov_masks=["Δ grpo-s0", "Δ grpo-s1"], ov_crit="1e-06", precision="bf16")
    assert not at.exception and not at.error, [e.value for e in at.error]
    page = exports["Overlap"]()
    params = _params(page.decode() if isinstance(page, bytes) else page)
    assert params["base"] and params["criterion"] == "1e-06" and params["precision"] == "bf16", params


# --- 3: the CLI report's consensus table holds its chance ------------------------------------------------------------
def test_the_report_s_consensus_table_gives_the_global_chance_per_k(tmp_path, monkeypatch):
    """Three finetunes of a tiny bf16 Llama, changed at densities that differ by tensor: the table said "against
    independent masks" but held k and count only. Its expected count per k is the chart's marker, the global
    chance: each mask independent at its density over every entry compared (here by enumerating the 2^3 sets of
    masks, in float64), and the × chance column is the count over it."""
    from subnetviz.__main__ import main
    from subnetviz.analysis.updates import read_analysis
    from subnetviz.report.dashboard import analysis_sections
    from tests.ckpt_fixtures import write_folder

    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "intermediate_size": F,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "num_key_value_heads": 3,
        "head_dim": 4,
        "vocab_size": V,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) + 3).to(torch.bfloat16) for n, s in llama().items()}
    sds = [base]
    for _ in range(3):  # each tensor changed at a density of its own
        dens = torch.rand(len(base), generator=g) * 0.8 + 0.05
        pick = {n: torch.rand(t.shape, generator=g) < d for (n, t), d in zip(base.items(), dens, strict=True)}
        sds.append({n: torch.where(pick[n], (t.float() * 1.25).to(torch.bfloat16), t) for n, t in base.items()})
    paths = []
    for k, sd in enumerate(sds):
        folder = write_folder(tmp_path / f"m{k}", sd)
        (folder / "config.json").write_text(json.dumps(cfg))
        paths.append(str(folder))
    changed = [
        np.concatenate([(sd[n].view(torch.int16) != base[n].view(torch.int16)).numpy().ravel() for n in base])
        for sd in sds[1:]
    ]  # bit for bit
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["analyze", *paths, "--out", str(out), "--no-spectra", "--subspaces", "0"]) == 0

    flat = np.stack(changed).astype(np.int64)  # (3, n): every tensor compared (one shape in every finetune)
    n = flat.shape[1]
    counts = np.bincount(flat.sum(0), minlength=4).astype(np.float64)
    p = flat.sum(1) / n
    chance = np.zeros(4)
    for code in range(8):
        inside = np.array([(code >> i) & 1 for i in range(3)], bool)
        chance[inside.sum()] += n * np.prod(np.where(inside, p, 1 - p))
    (section,) = [s for s in analysis_sections(read_analysis(out)) if s.title == "Overlap of update masks"]
    ((caption, table),) = [(c, t) for c, t in section.tables if c.startswith("Entries changed in exactly k")]
    assert "global chance" in caption
    np.testing.assert_array_equal(table["count"].to_numpy(np.float64), counts)
    np.testing.assert_allclose(table["expected_count_global"].to_numpy(), chance, rtol=1e-10)
    np.testing.assert_allclose(table["ratio_over_chance_global"].to_numpy(), counts / chance, rtol=1e-10)

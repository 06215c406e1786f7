"""Review follow-ups of the Workspace and the shared sidebar (third pass), on the app (AppTest; the chips in Chromium).

A checkpoint given as its folder and as its ``model.safetensors`` (or its shard index) was compared twice on every
page that takes the finetunes (two identical rows, ``ftA`` and ``ftA-2``); a link's ``device=cuda`` became ``auto``
without a word on a server without CUDA; an adapter saved in bf16 read ``bf16 (64)`` where model rows read
``bfloat16 (…)``; the chip of an index file showed "afetensors.index.json" for every sharded checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from subnetviz import uilogic
from tests.app_fixtures import open_page
from tests.browser import E2E
from tests.browser import open_page as open_browser_page
from tests.ckpt_fixtures import read_state_dict, write_folder
from tests.models import make_llama

pytestmark = pytest.mark.usefixtures("typed_options")

CHANGED = {"ftA": 3, "shB": 5}  # finetune -> entries of lm_head moved by 0.5 (exact in fp32), planted


@pytest.fixture(scope="module")
def planted(app_env):
    """An fp32 Llama base in the app's home, ``ftA`` as one file and ``shB`` sharded (with its index), each with
    CHANGED entries of ``lm_head.weight`` moved, and a LoRA adapter saved in bf16; (folder, parameters of the base)."""
    from safetensors.torch import load_file

    root = app_env / "workspace3"
    make_llama(root / "tmp")
    base = {k: v.to(torch.float32) for k, v in read_state_dict(root / "tmp").items()}
    write_folder(root / "base", base, root / "tmp", torch_dtype="float32")
    for name, k in CHANGED.items():
        sd = {n: v.clone() for n, v in base.items()}
        sd["lm_head.weight"].view(-1)[torch.arange(k) * 7] += 0.5
        write_folder(root / name, sd, root / "tmp", torch_dtype="float32")
    # shB as two shards and an index, as save_pretrained writes a sharded folder
    sd = load_file(str(root / "shB" / "model.safetensors"))
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2]}
    halves["model-00002-of-00002.safetensors"] = names[len(names) // 2 :]
    for file, part in halves.items():
        save_file({n: sd[n] for n in part}, str(root / "shB" / file), metadata={"format": "pt"})
    weight_map = {n: file for file, part in halves.items() for n in part}
    (root / "shB" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "shB" / "model.safetensors").unlink()
    lora = root / "lora_bf16"
    lora.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.ones(2, 16, dtype=torch.bfloat16),
            f"{prefix}.lora_B.weight": torch.ones(16, 2, dtype=torch.bfloat16),
        },
        str(lora / "adapter_model.safetensors"),
    )
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "fan_in_fan_out": False}
    (lora / "adapter_config.json").write_text(json.dumps(cfg))
    return root, sum(v.numel() for v in base.values())


def _text(element) -> str:
    """What a Markdown element reads as (ui.plain escapes punctuation and breaks autolinks)."""
    return element.value.replace("\\", "").replace("\u200b", "")


def _no_exception(at):
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_a_folder_and_its_weights_file_are_compared_once(planted):
    root, numel = planted
    given = [
        str(root / "ftA"),
        str(root / "ftA" / "model.safetensors"),
        str(root / "shB" / "model.safetensors.index.json"),
        str(root / "shB"),
    ]
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=given))
    assert not at.error, [e.value for e in at.error]
    helps = {m.label: m.help for m in at.metric}
    assert list(helps) == ["ftA", "shB"]  # (ftA, ftA-2, shB, shB-2)
    for name, k in CHANGED.items():
        assert helps[name].startswith(f"{k} of {numel:,} parameters changed"), helps[name]
    assert list(at.session_state["_tables"]["checkpoints"][1]["label"]) == ["base", "ftA", "shB"]
    where = f"{root.parent.name}/workspace3"  # (paths are shown from their root)
    said = [_text(c) for c in at.caption if "named already" in _text(c)]
    assert said == [
        f"Not compared again, named already: {where}/ftA/model.safetensors (the same checkpoint as ftA), "
        f"{where}/shB (the same checkpoint as shB)."
    ]


@pytest.mark.parametrize("page", ["overlap", "series"])
def test_pages_that_take_the_finetunes_get_each_checkpoint_once(planted, page):
    root, _ = planted
    given = [str(root / "shB"), str(root / "ftA"), str(root / "shB" / "model.safetensors.index.json")]
    at = _no_exception(open_page(page, base=str(root / "base"), ft=given))
    ws = at.session_state["_workspace"]
    assert [label for label, _ in ws.finetuned] == ["shB", "ftA"]
    assert any("(the same checkpoint as shB)" in _text(c) for c in at.caption)


def test_a_links_cuda_on_a_server_without_cuda_is_said_and_kept(planted, monkeypatch):
    root, _ = planted
    monkeypatch.setattr(uilogic, "has_cuda", lambda: False)
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=[str(root / "ftA")], device="cuda"))
    box = at.sidebar.selectbox(key="device")
    assert box.value == "cuda" and box.options == ["auto", "cpu", "cuda"]  # (it read 'auto', the link's value lost)
    assert at.session_state["_workspace"].device == "cpu"
    said = [_text(c) for c in at.caption if "CUDA" in _text(c)]
    assert said == [
        "This server has no CUDA device: the analyses run on the CPU (the link's device=cuda is kept for sharing, "
        "under Compute in the sidebar)."
    ]
    assert [m.label for m in at.metric] == ["ftA"]  # the page is drawn, on the CPU

    monkeypatch.setattr(uilogic, "has_cuda", lambda: True)  # a server with CUDA: nothing to say
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=[str(root / "ftA")], device="cpu"))
    assert not [c for c in at.caption if "CUDA" in _text(c)] and at.session_state["_workspace"].device == "cpu"


def test_an_adapters_row_shows_its_files_stored_dtype(planted):
    root, _ = planted
    at = _no_exception(open_page("workspace", base=str(root / "base"), ft=[str(root / "lora_bf16")]))
    table = at.session_state["_tables"]["checkpoints"][1].set_index("label")
    assert table.loc["lora_bf16", "stored dtype"] == "bfloat16 (64)"  # 2·16 + 16·2 entries, saved as bf16
    assert table.loc["base", "stored dtype"].startswith("float32 (")


# --- the chips in a browser --------------------------------------------------------------------------------------
VISIBLE = """(e) => {
    const text = e.firstChild, range = document.createRange(), box = e.getBoundingClientRect();
    let shown = "";
    for (let i = 0; i < text.length; i++) {
        range.setStart(text, i); range.setEnd(text, i + 1);
        const r = range.getBoundingClientRect();
        if (r.left >= box.left - 0.5 && r.right <= box.right + 0.5 && r.top >= box.top - 0.5
            && r.bottom <= box.bottom + 0.5) shown += text.data[i];
    }
    return {shown: shown, title: e.title};
}"""


@pytest.mark.e2e
@E2E[1]
def test_chips_of_weights_files_show_their_folder(browser, app_url, app_home):
    """The chip of an index file (and of a model.safetensors) shows its folder's name before the file's; it showed
    the same "afetensors.index.json" for every sharded checkpoint. A folder's chip is as before (one line)."""
    from urllib.parse import urlencode

    folder = app_home / "a-long-folder-of-finetuned-checkpoints"
    paths = [
        str(folder / "run-alpha" / "model.safetensors.index.json"),
        str(folder / "run-beta" / "model.safetensors.index.json"),
        str(folder / "run-gamma" / "model.safetensors"),
        str(folder / "run-delta"),
    ]
    ctx, page = open_browser_page(browser, f"{app_url}/workspace?{urlencode([('ft', p) for p in paths])}")
    try:
        chips = page.get_by_test_id("stSidebar").locator(".st-key-ft [data-tag] > span[title]")
        assert chips.count() == 4
        got = [chip.evaluate(VISIBLE) for chip in chips.all()]
        assert [g["title"] for g in got] == paths
        for g, end in zip(got, ["run-alpha/", "run-beta/", "run-gamma/", ""], strict=True):
            if end:
                assert g["shown"].endswith(end + g["title"].rsplit("/", 1)[1]), g
        assert got[3]["shown"].endswith("/run-delta") and chips.all()[3].bounding_box()["height"] < 30
    finally:
        ctx.close()

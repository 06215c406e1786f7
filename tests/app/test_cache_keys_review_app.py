"""Cache keys review fixes in the app (AppTest, one server process for the module): a finetune chosen by its shard
index follows a shard rewritten in place (Workspace), a base folder rewritten with a mixture of experts offers its
routers as a mask (Behaviour), and the held-out accuracy follows a model's tokenizer (Training)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.app_fixtures import add_finished_run, open_page
from tests.models import make_tiny_llama, make_tiny_moe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("typed_options")]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A home of its own (no demo zoo, one held-out set in zoo/data), this process pointed at it for the module."""
    root = tmp_path_factory.mktemp("cache-keys-app").resolve()
    (root / "zoo" / "data").mkdir(parents=True)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((1, 2), (3, 4), (12, 30))]
    (root / "zoo" / "data" / "A_eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    saved = {k: os.environ.get(k) for k in ("SUBNETVIZ_HOME", "SUBNETVIZ_ROOTS", "SUBNETVIZ_CONFIRM_ABOVE_S")}
    os.environ["SUBNETVIZ_HOME"] = os.environ["SUBNETVIZ_ROOTS"] = str(root)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _open(page: str, base: Path, ft: Path, **query):
    """``page`` with ``base`` and ``ft`` chosen in the sidebar (typed in: folders outside any zoo)."""
    at = open_page(page, ft=[str(ft)], **query)
    return at.selectbox(key="base").set_value(str(base)).run()


def _ok(at):
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


# --- 5. Workspace: a finetune chosen by its shard index -----------------------------------------------------------
def test_a_finetune_chosen_by_its_index_follows_a_shard_rewritten_in_place(home):
    g = torch.Generator().manual_seed(0)
    base = {
        "model.embed_tokens.weight": torch.randn(64, 16, generator=g),
        "lm_head.weight": torch.randn(64, 16, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
        "model.norm.weight": torch.ones(16),
    }
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False}
    for name in ("idx-base", "idx-ft"):
        (home / name).mkdir()
        (home / name / "config.json").write_text(json.dumps(config))
    save_file(base, str(home / "idx-base" / "model.safetensors"))
    names = sorted(base)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    weight_map = {k: s for s, ks in shards.items() for k in ks}
    index = home / "idx-ft" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    def unchanged_share(ft: dict) -> str:  # the share of entries bitwise equal to the base's, as the page rounds it
        same = sum(int(torch.eq(ft[k], base[k]).sum()) for k in base)
        return f"{100 * same / sum(v.numel() for v in base.values()):.2f} %"

    shown = []
    for moved in (["model.layers.0.mlp.up_proj.weight"], ["model.layers.0.mlp.up_proj.weight", names[3]]):
        ft = {k: v + 0.5 if k in moved else v.clone() for k, v in base.items()}
        for shard, keys in shards.items():  # each shard rewritten in place; the index is not
            save_file({k: ft[k] for k in keys}, str(home / "idx-ft" / shard))
        at = _open("workspace", home / "idx-base", index)
        (metric,) = _ok(at).metric  # the one finetune's unchanged share
        shown.append((metric.value, unchanged_share(ft)))
    assert shown[0][1] != shown[1][1]  # (81.92 % and 72.88 %: the rewrite moved the q projection too)
    assert [page for page, _ in shown] == [want for _, want in shown]


# --- 6. Behaviour: the routers mask of a base folder rewritten in place -------------------------------------------
def test_a_base_rewritten_with_a_mixture_of_experts_offers_its_routers(home, monkeypatch):
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "0")  # the masks offered are drawn; nothing is computed
    base, ft = home / "bh-base", home / "bh-ft"
    offered = []
    for make in (make_tiny_llama, make_tiny_moe):
        for folder, seed in ((base, 0), (ft, 1)):
            shutil.rmtree(folder, ignore_errors=True)  # the same folders, another model
            make(folder, seed=seed)
        at = _open("behavior", base, ft)
        assert not at.exception, [e.message for e in at.exception]
        offered.append(at.multiselect(key="bh_masks").options)
    assert "MoE routers (swap)" not in offered[0]  # a dense model has no routers
    assert "MoE routers (swap)" in offered[1]


# --- 3. Training: the held-out accuracy follows a model's tokenizer -----------------------------------------------
def _planted_accuracy(model_dir, eval_jsonl, max_new_tokens=8, **_):
    """The accuracy a tokenizer gives, planted in its tokenizer_config.json (the real one decodes the answers)."""
    return json.loads((Path(model_dir) / "tokenizer_config.json").read_text())["planted_accuracy"]


def test_the_held_out_accuracy_follows_a_model_s_tokenizer(home, monkeypatch):
    import subnetviz.training.evaluate as evaluate
    from subnetviz.jobs.runner import JobRunner

    monkeypatch.setattr(evaluate, "evaluate_accuracy", _planted_accuracy)
    monkeypatch.setenv("SUBNETVIZ_CONFIRM_ABOVE_S", "inf")
    runner = JobRunner()
    tokenizers = {}
    for i, name in enumerate(("full", "sub")):
        run_dir = add_finished_run(runner, f"acc-{name}", "train", name, {"kind": "train"})
        model = make_tiny_llama(run_dir / "outputs" / "model", seed=i)
        tokenizers[name] = model / "tokenizer_config.json"
    shown = []
    for planted in (0.25, 0.75):  # the subnetwork model's tokenizer edited in place: same weights and config
        for name, path in tokenizers.items():
            cfg = json.loads(path.read_text())
            path.write_text(json.dumps({**cfg, "planted_accuracy": 0.5 if name == "full" else planted}))
        at = open_page(
            "training",
            tr_view="Subnetwork vs full",
            cmp_full="run full · acc-full",
            cmp_sub="run sub · acc-sub",
            cmp_acc="true",
        )
        frames = [d.value for d in _ok(at).dataframe if "accuracy" in d.value.columns]
        assert len(frames) == 1, [d.value.columns for d in at.dataframe]
        shown.append(dict(zip(frames[0]["model"], frames[0]["accuracy"], strict=True)))
    assert shown == [{"full": 50.0, "subnetwork": 25.0}, {"full": 50.0, "subnetwork": 75.0}]  # (in %)

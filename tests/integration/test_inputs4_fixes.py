"""Hub-cache and bad inputs, fourth pass (review "inputs4", findings 1 and 5).

1. A checkpoint whose config ties the head (``tie_word_embeddings``) but which stores its own ``lm_head.weight``
   with values other than the embedding's (a PEFT ``modules_to_save=["lm_head"]`` merge of a tied model saves one)
   is loaded untied by transformers 5 ("both are present in the checkpoints with different values, so we will NOT
   tie them"). subnetviz dropped its head as tied (against a tied base: the head left out of the counts), or compared
   the other side's head with its embedding (against an untied base). The counts are checked here against the two
   models as ``AutoModelForCausalLM`` loads them, and the Behaviour page's model builder against the same loads.
5. Two hub-cache states were misdescribed: a short commit that begins several snapshots ("it holds no snapshot for
   abcd, but these: …"), and a snapshot with no weights left by an interrupted download ("no weights found", with
   nothing of the ``.incomplete`` blob beside it). The cache is laid out in ``tmp_path`` as huggingface_hub writes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ckpt_fixtures import bf16_step, read_state_dict, write_folder
from tests.models import make_llama
from tests.unit.test_hub_inputs_review import add_snapshot, base_weights, model_files, sharded_files

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


# ---------------------------------------------------------------- 1. a tied config storing a head of its own
@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, Path]:
    """Tiny bf16 Llamas: ``base`` (untied, its own head), ``tied_base`` (the same, tied: the embedding stored
    alone), ``apart`` (a finetune moving a random 40 % of every tensor, its head too, saved with a config that ties
    the head while storing both tensors: different values) and ``equal`` (the same finetune tied, storing its head as
    a copy of its embedding, as a ``.bin`` of a tied model does)."""
    root = tmp_path_factory.mktemp("inputs4-heads")
    base = make_llama(root / "base")
    sd = read_state_dict(base)
    g = torch.Generator().manual_seed(4)
    moved = {k: torch.where(torch.rand(v.shape, generator=g) < 0.4, bf16_step(v, 2), v) for k, v in sd.items()}
    assert not torch.equal(moved[HEAD], moved[EMBED])
    return {
        "base": base,
        "tied_base": write_folder(
            root / "tied_base", {k: v for k, v in sd.items() if k != HEAD}, base, tie_word_embeddings=True
        ),  # fmt: skip
        "apart": write_folder(root / "apart", moved, base, tie_word_embeddings=True),
        "equal": write_folder(root / "equal", {**moved, HEAD: moved[EMBED].clone()}, base, tie_word_embeddings=True),
    }


def _loaded_counts(base: Path, ft: Path) -> tuple[int, int]:
    """(parameters, entries changed bitwise) of ``ft`` against ``base``, both loaded by transformers'
    AutoModelForCausalLM: its parameters as ``named_parameters`` lists them (a tied head is the embedding's one
    tensor), a head a model ties being its embedding. Independent of subnetviz's reading and alignment."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # (the warning that it will NOT tie them)
    try:
        a, b = (AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.bfloat16) for m in (base, ft))
    finally:
        logging.set_verbosity(verbosity)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    numel = changed = 0
    for name in sorted(set(pa) | set(pb)):
        x = pa.get(name, a.get_input_embeddings().weight if name == HEAD else None)
        y = pb.get(name, b.get_input_embeddings().weight if name == HEAD else None)
        numel += y.numel()
        changed += int((x.view(torch.int16) != y.view(torch.int16)).sum())
    return numel, changed


def _analysis(base: Path, ft: Path):
    from subnetviz.analysis.updates import analyze_updates

    a = analyze_updates(str(base), [str(ft)], device="cpu")
    row = a.summary().iloc[0]
    return (int(row.numel), int(row.changed)), a.notes


@pytest.mark.parametrize("base", ["tied_base", "base"])
def test_a_tied_config_storing_a_head_of_its_own_is_counted_as_transformers_loads_it(heads, base):
    """Against a tied base the head was left out (445,920-style counts); against an untied one the finetune's
    embedding was compared as its head. Both now give what the two loaded models give."""
    got, notes = _analysis(heads[base], heads["apart"])
    want = _loaded_counts(heads[base], heads["apart"])
    assert got == want
    assert want[0] == sum(t.numel() for t in read_state_dict(heads["apart"]).values())  # the head counted
    said = [n for n in notes if "NOT tie them" in n]
    assert len(said) == 1 and HEAD in said[0] and EMBED in said[0] and "\n" not in said[0]
    assert not any(str(heads["apart"]) in n and "counted once" in n for n in notes)


def test_a_tied_config_storing_an_equal_copy_of_its_head_is_still_counted_once(heads):
    """Equal values: transformers ties the two, and the copy is not counted (the head is the embedding)."""
    got, notes = _analysis(heads["tied_base"], heads["equal"])
    assert got == _loaded_counts(heads["tied_base"], heads["equal"])
    assert got[0] == sum(t.numel() for k, t in read_state_dict(heads["equal"]).items() if k != HEAD)
    assert any("counted once" in n for n in notes) and not any("NOT tie them" in n for n in notes)


def test_the_head_and_embedding_are_read_once_each_and_only_where_the_config_ties_both_stored(heads, monkeypatch):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.sources import Checkpoint

    reads: list[str] = []
    real = Checkpoint.get
    monkeypatch.setattr(Checkpoint, "get", lambda self, name, device="cpu": reads.append(name) or real(self, name))
    for name, tied, read in (("base", False, 0), ("tied_base", True, 0), ("apart", False, 2), ("equal", True, 2)):
        reads.clear()
        ck = open_checkpoint(heads[name])
        assert [ck.tied_embeddings for _ in range(3)] == [tied] * 3, name
        assert sorted(reads) == sorted([HEAD, EMBED][:read]), name
    assert open_checkpoint(heads["apart"]).head_stored_apart == (HEAD, EMBED)


@pytest.mark.parametrize("base", ["tied_base", "base"])
def test_the_pages_that_load_the_model_agree_with_the_counts(heads, base):
    """The Behaviour page's builder loads the finetune with transformers (its head untied: a parameter of its own)
    and writes each parameter from the aligned tensors. Against a tied base it refused the pair (the head had no
    aligned tensor); against an untied one it wrote the finetune's embedding into the head. Now the finetune built is
    the loaded one, and reverting every weight gives the base as transformers loads it (a tied base's head is its
    embedding). Masks are placed by the same decision: the untied head is not folded into the embedding."""
    from transformers import AutoModelForCausalLM

    from subnetviz.analysis.revert import ModelBuilder, tied_embedding
    from subnetviz.checkpoints import open_checkpoint

    builder = ModelBuilder(str(heads[base]), str(heads["apart"]), "cpu")
    stored = read_state_dict(heads["apart"])
    builder.build(None)
    assert torch.equal(builder.model.lm_head.weight, stored[HEAD])
    assert torch.equal(builder.model.get_input_embeddings().weight, stored[EMBED])
    builder.build(lambda i, name, a, b: torch.ones_like(a, dtype=torch.bool))
    want = AutoModelForCausalLM.from_pretrained(str(heads[base]), dtype=torch.bfloat16)
    for name, p in builder.model.named_parameters():
        w = want.lm_head.weight if name == HEAD else want.get_parameter(name)
        assert torch.equal(p, w), name
    assert tied_embedding(open_checkpoint(heads["apart"])) is None
    assert tied_embedding(open_checkpoint(heads["equal"])) == EMBED


# ---------------------------------------------------------------- 5. hub-cache messages
A1, A2 = "abcd" + "1" * 36, "abcd" + "2" * 36


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "SUBNETVIZ_ROOTS", "SUBNETVIZ_ENFORCE_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def _refusal(spec: str) -> tuple[type, str]:
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import SubnetvizError

    with pytest.raises(SubnetvizError) as exc:
        open_checkpoint(spec)
    assert "\n" not in str(exc.value)
    return type(exc.value), str(exc.value)


def test_a_short_commit_beginning_several_snapshots_is_said_to_be_ambiguous(cache):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import NotCachedError

    files = model_files(base_weights())
    add_snapshot(cache, "acme/ambig", A1, files)
    add_snapshot(cache, "acme/ambig", A2, files, refs=())
    kind, text = _refusal("acme/ambig@abcd")
    assert kind is not NotCachedError and "no snapshot" not in text
    assert text.startswith("acme/ambig@abcd is ambiguous")
    assert "acme/ambig@abcd111" in text and "acme/ambig@abcd222" in text and "give more characters" in text
    assert open_checkpoint("acme/ambig@abcd2").root.name == A2  # one snapshot begins with it: read
    assert open_checkpoint(f"acme/ambig@{A1[:12].upper()}").root.name == A1
    kind, text = _refusal("acme/ambig@abce")  # none begins with it: the listing, as before
    assert kind is NotCachedError and "it holds no snapshot for abce, but these: acme/ambig@main" in text


def test_a_snapshot_left_by_an_interrupted_download_says_so_and_how_to_resume(cache):
    commit = "9" * 40
    add_snapshot(cache, "acme/partial", commit, model_files(base_weights()), skip=("model.safetensors",))
    _, text = _refusal("acme/partial")
    assert "no weights found" in text
    assert "a download was interrupted (1 .incomplete blob(s)" in text
    assert text.endswith("run `hf download acme/partial` again to finish it.")
    # a snapshot that refs/main does not name was fetched at its revision: resumed at that one
    add_snapshot(cache, "acme/partial", "8" * 40, model_files(base_weights()), refs=())
    (cache / "models--acme--partial" / "refs" / "main").write_text("8" * 40)
    _, text = _refusal(f"acme/partial@{commit}")
    assert f"`hf download acme/partial --revision {commit}` again" in text
    # a shard of a sharded model: named, and the interruption said
    add_snapshot(cache, "acme/shards", "7" * 40, sharded_files(base_weights()),
                 skip=("model-00002-of-00002.safetensors",))  # fmt: skip
    _, text = _refusal("acme/shards")
    assert "model-00002-of-00002.safetensors" in text and "a download was interrupted (1 .incomplete blob(s)" in text


def test_a_snapshot_without_weights_and_nothing_interrupted_says_only_that(cache):
    add_snapshot(cache, "acme/bare", "6" * 40, {"config.json": model_files(base_weights())["config.json"]})
    _, text = _refusal("acme/bare")
    assert "no weights found" in text and "interrupted" not in text and "hf download" not in text


@pytest.mark.parametrize("spec", ["", "   ", "\t"])
def test_an_empty_checkpoint_path_is_refused_by_the_library_too(tmp_path, monkeypatch, spec):
    """Path("") is the working folder: a library caller's empty spec (the CLI refuses it itself) compared the folder
    it ran in, here a model folder, and published an entry for a model with no name."""
    from subnetviz.checkpoints.sources import checkpoint_files, fingerprint, open_checkpoint
    from subnetviz.errors import CheckpointError
    from tests.models import make_tiny_llama

    monkeypatch.chdir(make_tiny_llama(tmp_path / "model"))
    for read in (open_checkpoint, fingerprint, checkpoint_files):
        with pytest.raises(CheckpointError, match="an empty checkpoint path"):
            read(spec)

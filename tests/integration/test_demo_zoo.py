"""The demo zoo: its data (Markov chain, problem sets, tokenizer) and the micro build end to end.

Numbers are checked against independent references: bf16 bit patterns read straight from the
safetensors bytes with NumPy (no torch, no safetensors library), a hand-solved 2-state chain,
and transition counts from a long sample of the pretraining chain documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from subnetviz.demo import MEMBER_IDS, ZooManifest, load_zoo, zoo_is_built
from subnetviz.demo.build import PRESETS, build_zoo, main
from subnetviz.demo.corpus import make_chain, make_problem_sets, stationary_distribution
from subnetviz.demo.lock import build_lock
from subnetviz.demo.tokenizer import build_tokenizer, chain_letters, vocabulary
from subnetviz.errors import CheckpointError, ConfigError, JobError
from subnetviz.masks import load_mask_set
from tests.zoo_fixtures import read_bits


def changed_bits(a: Path, b: Path) -> dict[str, np.ndarray]:
    ba, bb = read_bits(a), read_bits(b)
    assert set(ba) == set(bb)
    return {k: ba[k] != bb[k] for k in ba}


# ------------------------------------------------------------------------------------------- data


def test_stationary_distribution_of_two_state_chain_matches_closed_form():
    a, b = 0.3, 0.1
    p = np.array([[1 - a, a], [b, 1 - b]])
    np.testing.assert_allclose(stationary_distribution(p), [b / (a + b), a / (a + b)], atol=1e-12)


def test_chain_is_seeded_structured_and_stationary():
    c1 = make_chain(chain_letters(14), concentration=0.3, seed=0)
    c2 = make_chain(chain_letters(14), concentration=0.3, seed=0)
    np.testing.assert_array_equal(c1.transition, c2.transition)
    np.testing.assert_allclose(c1.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(c1.stationary @ c1.transition, c1.stationary, atol=1e-12)
    # Small concentration: far below the uniform chain's entropy rate log(14) = 2.64 nats.
    assert c1.entropy_rate < 0.8 * np.log(14)


def test_problem_sets_hold_out_eval_and_dev_from_everything_else():
    ps = make_problem_sets(pool=(10, 99), range_a=(10, 49), range_b=(50, 99), n_eval=200, seed=0)
    held = set(ps.a_eval) | set(ps.b_eval) | set(ps.dev)
    assert len(held) == 600
    assert not held & set(ps.pretrain)
    assert not set(ps.a_eval) & set(ps.a_train) and not set(ps.b_eval) & set(ps.b_train)
    assert all(10 <= p.a <= 49 and 10 <= p.b <= 49 for p in ps.a_train + ps.a_eval)
    assert all(50 <= p.a <= 99 and 50 <= p.b <= 99 for p in ps.b_train + ps.b_eval)
    assert len(ps.pretrain) + 600 == 90 * 90


def test_tokenizer_is_one_id_per_character_without_special_tokens():
    tok = build_tokenizer(14)
    vocab = vocabulary(14)
    ids = tok("12+34=")["input_ids"]
    assert [vocab[i] for i in ids] == list("12+34=")
    assert tok.decode(tok("46")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True) == "46"
    assert (tok.pad_token, tok.eos_token) == ("<pad>", "<eos>")


def test_unknown_preset_and_missing_zoo_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="micro"):
        build_zoo(tmp_path, preset="mikro")
    assert not zoo_is_built(tmp_path)
    with pytest.raises(CheckpointError, match="demo build"):
        load_zoo(tmp_path)
    (tmp_path / "data").mkdir()  # someone's own folder: a build must not wipe it
    with pytest.raises(ConfigError, match="not empty"):
        build_zoo(tmp_path, preset="micro")
    assert (tmp_path / "data").is_dir()


# ------------------------------------------------------------------------------------ micro build


@pytest.mark.slow
def test_manifest_names_every_member_with_consistent_numbers(micro_zoo):
    man = micro_zoo.manifest
    assert [m.id for m in man.members] == list(MEMBER_IDS)
    s = PRESETS["micro"]
    for m in micro_zoo.members:
        assert (m.path / "model.safetensors").is_file() and (m.path / "tokenizer.json").is_file()
        # accuracy is a share of the held-out rows: an exact count of them, not just a number in [0, 1]
        n_eval = len(
            (micro_zoo.root / "data" / f"{'A' if m.data == 'mix' else m.data}_eval.jsonl").read_text().splitlines()
        )
        assert m.accuracy * n_eval == pytest.approx(round(m.accuracy * n_eval), abs=1e-9)
        assert m.sparsity == pytest.approx(1 - m.changed / m.numel)
        if m.id != "base":
            assert (m.steps, m.learning_rate) == (s.ft_steps, s.ft_lr)
            assert m.accuracy == getattr(m, "accuracy_" + m.data)
            summary = json.loads((m.path / "train_summary.json").read_text())
            assert summary["steps_done"] == s.ft_steps
    by_id = {m.id: m for m in man.members}
    assert {by_id[k].seed for k in ("grpo-s0", "grpo-s1", "grpo-s2")} == {0, 1, 2}
    assert by_id["grpo-B"].data == "B" and by_id["sft"].algorithm == "sft"
    assert by_id["base"].numel == man.base.params
    steps = [p.step for p in man.series]
    assert len(steps) >= 6 and steps == sorted(steps) and steps[-1] == s.ft_steps
    assert man.series[-1].path == Path("grpo-s0")
    assert micro_zoo.member_path("grpo-s0@1") == micro_zoo.root / "grpo-s0" / "checkpoints" / "step-1"
    assert set(man.stage_seconds) >= {"data", "base", "mask", "manifest", *MEMBER_IDS[1:]}
    assert 0.0 < by_id["grpo-sub"].identical_to_grpo_s0 < 1.0
    with pytest.raises(CheckpointError, match="grpo-s1"):
        micro_zoo.member_path("grpo-s11")


@pytest.mark.slow
def test_manifest_json_is_what_the_typed_records_write_and_a_damaged_one_is_named(micro_zoo, tmp_path):
    raw = json.loads((micro_zoo.root / "manifest.json").read_text())
    assert ZooManifest.from_dict(raw) == micro_zoo.manifest
    assert json.loads(json.dumps(micro_zoo.manifest.to_dict(), default=str)) == raw  # nothing lost or added
    assert set(raw["members"][0]) == {
        "id",
        "path",
        "algorithm",
        "seed",
        "data",
        "steps",
        "learning_rate",
        "accuracy",
        "accuracy_A",
        "accuracy_B",
        "sparsity",
        "changed",
        "numel",
    }
    assert {"mask", "mask_check", "identical_to_grpo_s0"} <= set(raw["members"][-1])
    del raw["members"][3]["sparsity"]
    with pytest.raises(CheckpointError, match="member 'grpo-s2' lacks 'sparsity'"):
        ZooManifest.from_dict(raw)


@pytest.mark.slow
def test_every_figure_matches_numpy_on_raw_bf16_bits(micro_zoo):
    """Sparsity of every member and series point, sub-vs-full identity and every overlap row, against
    bit patterns parsed straight from the safetensors bytes."""
    man = micro_zoo.manifest
    diffs = {}
    for m in micro_zoo.members[1:]:
        diffs[m.id] = changed_bits(micro_zoo.base, m.path)
        changed = sum(int(d.sum()) for d in diffs[m.id].values())
        numel = sum(d.size for d in diffs[m.id].values())
        assert (m.changed, m.numel) == (changed, numel), m.id
        assert m.sparsity == 1 - changed / numel
        assert 0 < changed < numel  # the comparison is not vacuous either way
    for p in man.series:
        d = changed_bits(micro_zoo.base, micro_zoo.root / p.path)
        assert p.sparsity == 1 - sum(int(x.sum()) for x in d.values()) / sum(x.size for x in d.values()), p.step
    d = changed_bits(micro_zoo.member_path("grpo-s0"), micro_zoo.member_path("grpo-sub"))
    same = 1 - sum(int(x.sum()) for x in d.values()) / sum(x.size for x in d.values())
    assert man.member("grpo-sub").identical_to_grpo_s0 == same
    assert len(man.overlap) == 7
    for o in man.overlap:
        a, b = diffs[o.a], diffs[o.b]
        inter = sum(int((a[k] & b[k]).sum()) for k in a)
        na, nb = (sum(int(x.sum()) for x in m.values()) for m in (a, b))
        n = sum(x.size for x in a.values())
        assert (o.intersection, o.o1, o.o2) == (inter, pytest.approx(inter / na), pytest.approx(inter / nb))
        assert (o.chance_o1, o.chance_o2) == (pytest.approx(nb / n), pytest.approx(na / n))


@pytest.mark.slow
def test_mask_is_grpo_s0_exact_update_and_overlap_numbers_agree(micro_zoo):
    ms = load_mask_set(micro_zoo.mask_path("grpo-s0"))
    diff = changed_bits(micro_zoo.base, micro_zoo.member_path("grpo-s0"))
    assert set(ms.masks) == set(diff)
    for name, d in diff.items():
        np.testing.assert_array_equal(ms.masks[name].numpy(), d, err_msg=name)
    assert ms.metadata["model"] == "grpo-s0" and ms.metadata["tolerance"] == 0.0
    s1 = changed_bits(micro_zoo.base, micro_zoo.member_path("grpo-s1"))
    inter = sum(int((diff[k] & s1[k]).sum()) for k in diff)
    row = micro_zoo.manifest.pair("grpo-s0", "grpo-s1")
    assert row.intersection == inter
    assert row.o1 == pytest.approx(inter / sum(int(d.sum()) for d in diff.values()))
    info = micro_zoo.manifest.masks["grpo-s0"]
    assert (info.count, info.numel) == (ms.count, ms.numel)


@pytest.mark.slow
def test_subnetwork_member_changed_nothing_outside_the_mask(micro_zoo):
    mask = load_mask_set(micro_zoo.mask_path("grpo-s0")).masks
    diff = changed_bits(micro_zoo.base, micro_zoo.member_path("grpo-sub"))
    outside = sum(int((d & ~mask[k].numpy()).sum()) for k, d in diff.items())
    inside = sum(int((d & mask[k].numpy()).sum()) for k, d in diff.items())
    assert outside == 0
    assert inside > 0  # it trained: something inside the mask moved
    assert sum(int((~m).sum()) for m in mask.values()) > 0  # and the mask leaves something outside


@pytest.mark.slow
def test_saved_bigram_law_matches_counts_of_the_pretraining_chain_text(micro_zoo):
    from transformers import AutoTokenizer

    from subnetviz.demo.pretrain import chain_token_batch

    z = np.load(micro_zoo.bigram_path)
    p, ids, letters = z["transition"], z["token_ids"], [str(c) for c in z["letters"]]
    tok = AutoTokenizer.from_pretrained(micro_zoo.base)
    assert tok.convert_tokens_to_ids(letters) == ids.tolist()
    assert int(z["vocab_size"]) == len(tok)
    np.testing.assert_allclose(z["stationary"] @ p, z["stationary"], atol=1e-12)
    s = PRESETS["micro"]
    chain = make_chain(
        tuple(letters),
        concentration=s.concentration,
        seed=s.chain_seed,
        order=s.chain_order,
        concentration2=s.concentration2,
    )
    batch = chain_token_batch(chain, tok.get_vocab(), 4000, s.chain_len, np.random.default_rng(123)).numpy()
    index = {int(t): i for i, t in enumerate(ids)}
    counts = np.zeros_like(p)
    cur, nxt = batch[:, :-1].ravel(), batch[:, 1:].ravel()
    np.add.at(counts, ([index[int(t)] for t in cur], [index[int(t)] for t in nxt]), 1)
    n = counts.sum(axis=1, keepdims=True)
    se = np.sqrt(p * (1 - p) / n)
    # Each row is multinomial(n_i, p_i): every frequency within 5 standard errors (+ a floor for p ~ 0).
    assert np.all(np.abs(counts / n - p) <= 5 * se + 1e-3)
    # The same criterion has the power to reject a wrong law (the transposed matrix).
    assert not np.all(np.abs(counts / n - p.T) <= 5 * se + 1e-3)
    # The first letters follow the stationary law, so letter frequencies do too.
    freq = np.bincount([index[int(t)] for t in batch.ravel()], minlength=len(ids)) / batch.size
    np.testing.assert_allclose(freq, z["stationary"], atol=0.01)


@pytest.mark.slow
def test_second_build_reuses_the_zoo_and_is_fast(micro_zoo):
    before = (micro_zoo.root / "manifest.json").read_bytes()
    seen = []
    weights = {f: f.stat().st_mtime_ns for f in micro_zoo.root.rglob("*.safetensors")}
    zoo = build_zoo(micro_zoo.root, preset="micro", progress=lambda k, n, msg: seen.append(msg))
    assert weights and {f: f.stat().st_mtime_ns for f in weights} == weights  # nothing retrained or rewritten
    assert (micro_zoo.root / "manifest.json").read_bytes() == before
    assert zoo.manifest == micro_zoo.manifest and "already built" in seen[-1]
    # --no-extras: the CLI's registry runs and background jobs are tests/integration/test_demo_extras.py's business
    assert main(["build", "--preset", "micro", "--root", str(micro_zoo.root), "--no-extras"]) == 0
    assert (micro_zoo.root / "manifest.json").read_bytes() == before


HOLD = """import sys, time
from subnetviz.demo.lock import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(root) -> subprocess.Popen:
    """Another process holding the build lock of ``root`` (a build in progress elsewhere)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_running_build_holds_the_lock_and_a_dead_builds_lock_is_free(micro_zoo, tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(JobError, match=f"already running \\(pid {holder.pid}\\)"):
            build_zoo(tmp_path, preset="micro")
    finally:
        holder.kill()
        holder.wait()
    # A build in this very process (e.g. another app thread) holds it too.
    with build_lock(tmp_path), pytest.raises(JobError, match="already running"):
        build_zoo(tmp_path, preset="micro")
    # A build killed outright leaves its lock file and pid behind; the OS released the lock itself,
    # so the next build proceeds (here: finds the zoo built), whatever pid the file names.
    holder = _holder(micro_zoo.root)
    holder.kill()
    holder.wait()
    assert (micro_zoo.root / ".build.lock.pid").read_text() == str(holder.pid)
    seen = []
    build_zoo(micro_zoo.root, preset="micro", progress=lambda k, n, msg: seen.append(msg))
    assert "already built" in seen[-1] and not (micro_zoo.root / ".build.lock.pid").exists()


@pytest.mark.slow
def test_incomplete_zoo_resumes_only_the_missing_member(micro_zoo, tmp_path):
    import shutil

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo.root, root)
    shutil.rmtree(root / "sft")
    (root / "manifest.json").unlink()
    assert not zoo_is_built(root)
    seen = []
    zoo = build_zoo(root, preset="micro", progress=lambda k, n, msg: seen.append(msg))
    assert zoo_is_built(root)
    ran = [m for m in seen if m.endswith("...")]
    assert len(ran) == 2 and ran[0].startswith("SFT")  # the missing member, then the manifest
    # Deterministic: the rebuilt member is bit-identical to the original one.
    assert zoo.manifest.member("sft").changed == micro_zoo.manifest.member("sft").changed
    a, b = read_bits(micro_zoo.member_path("sft")), read_bits(zoo.member_path("sft"))
    assert all(np.array_equal(a[k], b[k]) for k in a)

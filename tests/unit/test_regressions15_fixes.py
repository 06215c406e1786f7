"""Fixes of the regressions15 review (tiny one-layer Llama folders written by hand, each with a known answer).

1. A bf16 base whose values lie beyond float16's range, against an fp16 finetune compared at the stored precision,
   was refused with a plain ConfigError: the app, which leaves out per finetune only what names one, showed one
   page-wide error and no finetune at all. The refusal is now a :class:`CastRangeError` (still a ConfigError: the
   command line prints its one line) carrying that finetune's spec, as NonFiniteError does.
2. A GPTQ ``checkpoint_format`` holding "|" (``"marlin|v2"``) crashed the notes (the event kind was split on "|");
   a 300-character one went whole into ``stored_as`` and the notes.
3. ``file_slug`` gave ``grpo_s0`` and ``grpo-s0`` (and names differing in case only) one slug without a digest: two
   charts downloaded under one file name.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from subnetviz.analysis.updates import analyze_updates
from subnetviz.errors import CastRangeError, ConfigError
from subnetviz.text import file_slug
from tests.integration.test_quant5_fixes import S, W, _gptq_pair, _write


# --- 1. a base past float16's range against one fp16 finetune among others -------------------------------------------
def outlier_pair(tmp_path):
    """A bf16 base with three values past ±65504, a bf16 finetune ``A`` and an fp16 finetune ``B`` (the base's
    outliers clamped), each moving row 1's first four entries. Returns (base, A, B, {name: stored weight as float64})."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, generator=g) * 0.02
    w[0, :3] = torch.tensor([7e4, -1e5, 3e5])
    w = w.to(torch.bfloat16).float()  # (the base as stored)
    a = w.clone()
    a[1, :4] += 0.01
    b = w.clamp(-65504, 65504)
    b[1, :4] += 0.01
    stored = {"base": w.to(torch.bfloat16), "A": a.to(torch.bfloat16), "B": b.to(torch.float16)}
    base = _write(tmp_path / "b", {W: stored["base"]})
    fa = _write(tmp_path / "A", {W: stored["A"]})
    fb = _write(tmp_path / "B", {W: stored["B"]}, torch_dtype="float16")
    return base, fa, fb, {k: v.double().numpy() for k, v in stored.items()}


def test_the_refusal_names_the_fp16_finetune_it_concerns(tmp_path):
    base, fa, fb, x = outlier_pair(tmp_path)
    with pytest.raises(CastRangeError) as err:
        analyze_updates(base, [fa, fb], labels=["A", "B"])
    exc = err.value
    assert isinstance(exc, ConfigError) and exc.checkpoint == fb  # the one the app leaves out (the bf16 A is fine)
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(f"{base}: {W}: 3 value(s) of the base tensor (bfloat16)")
    assert f"the finetune {fb}" in msg and "fp32 or bf16" in msg and "--precision" in msg
    back = pickle.loads(pickle.dumps(exc))  # (a Ray worker's error reaches the app with its checkpoint)
    assert type(back) is CastRangeError and back.checkpoint == fb and str(back) == msg
    # what the app then compares: A alone, the entries whose stored values differ (float64 NumPy)
    rep = analyze_updates(base, [fa], labels=["A"]).reports[0]
    assert rep.changed == int((x["base"] != x["A"]).sum()) == 4


def test_the_command_line_prints_one_line(tmp_path):
    base, fa, fb, _ = outlier_pair(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "subnetviz", "analyze", base, fa, fb, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr + run.stdout
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert "3 value(s) of the base tensor" in line and f"the finetune {fb}" in line


# --- 2. a GPTQ checkpoint_format holding "|", or very long ---------------------------------------------------------
@pytest.mark.parametrize("fmt", ["marlin|v2", "a|b|c|d", "x" * 300])
def test_a_format_with_a_bar_or_of_any_length_is_noted_not_crashed(tmp_path, fmt):
    base, ft, truth = _gptq_pair(tmp_path, 4, fmt)
    rep = analyze_updates(base, [ft], labels=["ft"]).reports[0]
    row = rep.tensors.set_index("name").loc[f"{S}.qweight"]
    # compared as stored words: a word (8 codes of 8 consecutive input rows) changed when any of its codes did
    words = int(torch.from_numpy(truth).reshape(8, 8, 64).any(1).sum())
    assert row["numel"] == 8 * 64 and row["changed"] == words == 512
    shown = fmt if len(fmt) <= 60 else fmt[:59] + "…"  # the config's text echoed, cut to 60 characters
    assert row["stored_as"] == f"GPTQ {shown} packed codes (an entry: one int32 word of 8 4-bit codes)"
    (note,) = [n for n in rep.notes if n.startswith("GPTQ ")]
    assert note.startswith(f"GPTQ {shown} packed codes") and "(512 changed)" in note
    assert (fmt in note) == (len(fmt) <= 60)  # (the 300 characters nowhere whole)


# --- 3. file names of charts whose names differ only in punctuation or case ----------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("heat-grpo_s0", "heat-grpo-s0"),
        ("grpo_s0: sparsity (exact)", "grpo-s0: sparsity (exact)"),
        ("heat-GRPO-s0", "heat-grpo-s0"),
        ("Series · Run A", "series · run-a"),
    ],
)
def test_names_that_fold_to_one_slug_get_two_file_names(a, b):
    for limit in (40, 80):
        sa, sb = file_slug(a, limit), file_slug(b, limit)
        assert sa != sb and len(sa) <= limit and len(sb) <= limit
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in sa + sb)


def test_a_name_that_is_its_own_slug_stays_as_it_is():
    assert file_slug("heat-grpo-s0", 40) == "heat-grpo-s0" and file_slug("heat-grpo_s0", 40) == "heat-grpo_s0"
    assert file_slug("Which entries changed") == "Which-entries-changed"  # (separators folded: no digest)
    folded = file_slug("heat-grpo-s\u00f6", 40)  # the readable part kept, 8 hex digits of the whole name after it
    assert folded.startswith("heat-grpo-so-") and len(folded) == len("heat-grpo-so-") + 8
    assert file_slug("") and file_slug("") != file_slug("-")  # (nothing to keep: the digest alone)

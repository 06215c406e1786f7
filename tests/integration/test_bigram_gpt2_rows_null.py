"""The row-shuffle null on GPT-2 permutes output units, as the paper's code does (it transposes GPT-2's (in, out)
Conv1D blocks to (out, in) before ``np.random.shuffle`` permutes their rows)."""

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from subnetviz.bigram.evaluate import random_mask
from subnetviz.bigram.locate import compare_subnetworks
from subnetviz.bigram.maskable import blocks_of, maskable_shapes
from subnetviz.masks import MaskSet

D, L = 16, 2


def _planted():
    """Sparse random masks plus, in each ``mlp.c_fc``, whole MLP neurons (output columns of the stored (in, out)
    matrix): the bigram mask keeps 6 neurons, the optimal mask 4 of those and 8 others."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=D, n_head=2, n_layer=L, n_positions=8, n_inner=4 * D))
    rng = np.random.default_rng(0)
    m0, m1 = {}, {}
    for n, s in maskable_shapes(model).items():
        m0[n], m1[n] = rng.random(s) < 0.02, rng.random(s) < 0.05
        if n.endswith("mlp.c_fc.weight"):
            neurons0 = rng.choice(4 * D, 6, replace=False)
            others = rng.choice(np.setdiff1d(np.arange(4 * D), neurons0), 8, replace=False)
            m0[n][:, neurons0] = True
            m1[n][:, np.concatenate([neurons0[:4], others])] = True
    return model, m0, m1


def _out_in(masks: dict) -> list[np.ndarray]:
    """The paper code's blocks (utils/circuit_utils.py, convert_mask_names, gpt2): each transposed to (out, in)."""
    out = []
    for layer in range(L):
        c_attn = masks[f"transformer.h.{layer}.attn.c_attn.weight"]
        n = c_attn.shape[1] // 3
        out += [c_attn[:, i * n : (i + 1) * n].T for i in range(3)]
        out += [masks[f"transformer.h.{layer}.{m}.weight"].T for m in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    return out


def test_the_gpt2_row_null_expects_what_the_paper_code_s_row_shuffle_expects():
    """Before: the app permuted GPT-2's stored rows (input units): expected overlap 0.0231, 1.01× and p 0.37 where the
    paper's null gives 0.0091, 2.56× and p 0.00025 on this planted neuron-level overlap."""
    model, m0, m1 = _planted()
    blocks0, blocks1 = _out_in(m0), _out_in(m1)
    total = sum(b.size for b in blocks0)
    # a row permutation's expected overlap on (out, in) arrays: Σ_blocks colsum(C0)·colsum(C1) / rows
    expected = (
        sum(a.sum(0).astype(np.float64) @ c.sum(0) / a.shape[0] for a, c in zip(blocks0, blocks1, strict=True)) / total
    )
    observed = sum(int((a & c).sum()) for a, c in zip(blocks0, blocks1, strict=True)) / total
    rep = compare_subnetworks(
        MaskSet({k: torch.from_numpy(v) for k, v in m0.items()}),
        MaskSet({k: torch.from_numpy(v) for k, v in m1.items()}),
        blocks_of(model),
        draws=4000,
    )
    assert rep.overlap == observed
    assert abs(rep.expected_rows - expected) < 0.03 * expected, (rep.expected_rows, expected)
    assert rep.overlap / rep.expected_rows > 2.2 and rep.p_rows < 0.01


def test_a_gpt2_row_null_mask_keeps_each_output_unit_s_count():
    """``random_mask(null="rows")`` permutes output units: every block's per-output-unit counts (the stored columns
    of GPT-2's Conv1D) are a permutation of the original's, not its per-input-unit counts."""
    model, m0, _ = _planted()
    mask = MaskSet({k: torch.from_numpy(v) for k, v in m0.items()})
    shuffled = random_mask(mask, blocks_of(model), seed=3, null="rows").masks
    before = _out_in(m0)
    after = _out_in({k: v.numpy() for k, v in shuffled.items()})
    for a, b in zip(before, after, strict=True):
        assert sorted(a.sum(1)) == sorted(b.sum(1))  # each output unit's count kept (permuted)
    fc = "transformer.h.0.mlp.c_fc.weight"
    assert not np.array_equal(shuffled[fc].numpy().sum(0), m0[fc].sum(0))  # the neurons moved

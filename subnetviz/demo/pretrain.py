"""The demo zoo's base model: a tiny Llama pretrained with a plain torch loop, and sampling from it.

Pretraining mixes two document kinds each step (two forward passes, losses summed, so short
arithmetic documents are not padded to the chain documents' length):

- arithmetic: ``"12+34=46<eos>"`` for the pool problems that are not held out;
- Markov chain: ``chain_len`` letters drawn fresh from the chain each step, no ``<eos>``.

AdamW (no weight decay), warm-up then constant learning rate, fp32 training. It stops early once
a held-out dev accuracy reaches a target (a base that solves everything gives RL no signal).
Saved with ``model.to(torch.bfloat16).save_pretrained`` like a real bf16 checkpoint, with the
tokenizer beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from subnetviz.demo.corpus import MarkovChain, Problem, sample_chain


@dataclass(frozen=True)
class ModelShape:
    """The base's Llama dimensions (d_model, d_mlp, n_layers, n_heads, context length)."""

    hidden_size: int = 96
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    max_position_embeddings: int = 32


@dataclass(frozen=True)
class PretrainResult:
    folder: Path
    params: int
    steps: int
    seconds: float
    final_loss_arith: float
    final_loss_chain: float
    dev_accuracy: float | None
    stop_reason: str


def build_model(shape: ModelShape, tokenizer, *, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` (untied embeddings, eager attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg)


def _encode(texts: list[str], vocab: dict[str, int], *, eos: int | None, pad: int):
    """Right-padded ``(batch, max_len)`` ids and labels (-100 on padding). Causal attention never
    looks right, so right padding needs no attention mask."""
    import torch

    seqs = [[vocab[c] for c in t] + ([eos] if eos is not None else []) for t in texts]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(s)
    return ids, labels


def chain_token_batch(chain: MarkovChain, vocab: dict[str, int], n_docs: int, length: int, rng: np.random.Generator):
    """``(n_docs, length)`` token ids of fresh chain documents: the chain text exactly as pretraining
    sees it (no special tokens, so every letter is followed by a letter drawn from the chain)."""
    import torch

    letter_ids = torch.tensor([vocab[c] for c in chain.letters])
    return letter_ids[torch.from_numpy(sample_chain(chain, n_docs, length, rng))]


def greedy_accuracy(model, vocab: dict[str, int], eos_id: int, problems: tuple[Problem, ...], max_new: int) -> float:
    """Greedy exact-match accuracy of an in-memory model (prompts grouped by length: no padding)."""
    import torch

    inv = {i: t for t, i in vocab.items()}
    by_len: dict[int, list[Problem]] = {}
    for p in problems:
        by_len.setdefault(len(p.prompt), []).append(p)
    correct = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for group in by_len.values():
            ids = torch.tensor([[vocab[c] for c in p.prompt] for p in group])
            for _ in range(max_new):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            for p, row in zip(group, ids[:, len(group[0].prompt) :].tolist(), strict=True):
                cut = row.index(eos_id) if eos_id in row else len(row)
                correct += "".join(inv[i] for i in row[:cut]) == p.answer
    model.train(was_training)
    return correct / max(1, len(problems))


def pretrain(
    folder: str | os.PathLike,
    tokenizer,
    shape: ModelShape,
    problems: tuple[Problem, ...],
    chain: MarkovChain,
    *,
    steps: int,
    batch_arith: int,
    batch_chain: int,
    chain_len: int,
    max_lr: float,
    seed: int,
    dev: tuple[Problem, ...] = (),
    target_accuracy: float | None = None,
    check_every: int = 25,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> PretrainResult:
    """Train a base model and save it (bf16 + tokenizer) to ``folder``.

    Linear warm-up (``min(50, steps/10)`` steps), then a constant ``max_lr``. With ``target_accuracy``, greedy accuracy on ``dev`` (problems
    held out from pretraining) is checked every ``check_every`` steps and training stops at the
    first check that reaches it: the zoo wants a base that solves some problems, not all, so RL
    has a signal.
    """
    import torch

    t0 = time.perf_counter()
    folder = Path(folder)
    model = build_model(shape, tokenizer, seed=seed)
    model.train()
    vocab = tokenizer.get_vocab()
    eos = tokenizer.eos_token_id
    rng = np.random.default_rng(seed)
    texts = [p.prompt + p.answer for p in problems]
    max_new = max(len(p.answer) for p in problems) + 1
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=0.0)
    warmup = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup))
    loss_a = loss_c = float("nan")
    dev_acc: float | None = None
    stop_reason = f"ran all {steps} steps"
    done = 0
    for step in range(1, steps + 1):
        pick = rng.integers(len(texts), size=batch_arith)
        ids, labels = _encode([texts[i] for i in pick], vocab, eos=eos, pad=tokenizer.pad_token_id)
        loss = model(input_ids=ids, labels=labels).loss
        loss_a = float(loss.detach())
        if batch_chain:
            cids = chain_token_batch(chain, vocab, batch_chain, chain_len, rng)
            closs = model(input_ids=cids, labels=cids).loss
            loss_c = float(closs.detach())
            loss = loss + closs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step
        if target_accuracy is not None and dev and step % check_every == 0:
            dev_acc = greedy_accuracy(model, vocab, eos, dev, max_new)
            if progress is not None:
                progress(step, steps, dev_acc)
            if dev_acc >= target_accuracy:
                stop_reason = f"dev accuracy {dev_acc:.1%} >= target {target_accuracy:.0%} at step {step}"
                break
        elif progress is not None and step % 50 == 0:
            progress(step, steps, None)
    save_model(model, tokenizer, folder)
    params = sum(p.numel() for p in model.parameters())
    return PretrainResult(folder, params, done, time.perf_counter() - t0, loss_a, loss_c, dev_acc, stop_reason)


def save_model(model, tokenizer, folder: Path) -> None:
    import torch

    from subnetviz.cache import _UMASK  # the process' umask (read once at import)

    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):  # written 0600 by safetensors; the zoo's other files follow the umask
        os.chmod(weights, 0o666 & ~_UMASK)


def load_model(folder: str | os.PathLike):
    """A model folder as float32 (what TRL trains from), eval mode, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def sample_answers(
    folder: str | os.PathLike,
    prompts: list[str],
    *,
    n_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 4,
    seed: int = 0,
    batch_size: int = 512,
) -> list[list[str]]:
    """``n_samples`` completions per prompt (greedy when ``temperature == 0``), decoded and stripped.

    Returns one list of ``n_samples`` strings per prompt, in prompt order.
    """
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = load_model(folder)
    torch.manual_seed(seed)
    expanded = [p for p in prompts for _ in range(n_samples)]
    outs: list[str] = []
    for i in range(0, len(expanded), batch_size):
        chunk = expanded[i : i + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0 if temperature > 0 else None,
                top_p=1.0 if temperature > 0 else None,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        new = gen[:, enc["input_ids"].shape[1] :]
        outs.extend(s.strip() for s in tok.batch_decode(new, skip_special_tokens=True))
    return [outs[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]


def update_masks(base_dir: str | os.PathLike, other_dir: str | os.PathLike) -> dict:
    """Exact update masks: name -> bool tensor (True where the stored bit patterns differ).

    The update analysis' own masks (:func:`subnetviz.analysis.updates.analyze_updates`, bitwise on
    the stored dtype, tensors aligned by :mod:`subnetviz.checkpoints`), unpacked into a dict.
    """
    from subnetviz.analysis.sparsity import SparsityOptions
    from subnetviz.analysis.updates import analyze_updates

    options = SparsityOptions(tolerances=(), row_col=False)
    report = analyze_updates(base_dir, [other_dir], options=options, device="cpu").reports[0]
    return dict(report.masks)


def preference_pairs(
    base_dir: str | os.PathLike, rows: list[dict], *, n_prompts: int, n_samples: int, max_new_tokens: int, seed: int
) -> tuple[list[dict], dict]:
    """On-policy DPO rows: sample the base ``n_samples`` times (temperature 1) on ``n_prompts``
    seeded-random ``rows`` (``{"prompt", "answer"}``); keep prompts with both a correct and an
    incorrect sample. Returns ``(rows, notes)``."""
    from subnetviz.demo.corpus import dpo_rows

    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(rows))[:n_prompts]
    prompts, answers = [rows[i]["prompt"] for i in pick], [rows[i]["answer"] for i in pick]
    samples = sample_answers(
        base_dir, prompts, n_samples=n_samples, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed
    )
    out = dpo_rows(prompts, answers, samples, rng)
    correct = sum(s == a for outs, a in zip(samples, answers, strict=True) for s in outs)
    notes = {
        "kind": "on-policy: chosen = a correct base sample, rejected = an incorrect one",
        "sampled_prompts": len(prompts),
        "samples_per_prompt": n_samples,
        "sample_accuracy": correct / max(1, len(prompts) * n_samples),
        "pairs": len(out),
    }
    return out, notes


def offpolicy_sft_rows(
    base_dir: str | os.PathLike, rows: list[dict], *, max_new_tokens: int, min_rows: int
) -> tuple[list[dict], dict]:
    """SFT rows with gold answers for the prompts whose greedy base answer is wrong: targets the
    base does not produce (off-policy). With fewer than ``min_rows`` such prompts (a base that is
    nearly perfect) every prompt's gold answer is used. Returns ``(rows, notes)``."""
    greedy = sample_answers(base_dir, [r["prompt"] for r in rows], temperature=0.0, max_new_tokens=max_new_tokens)
    wrong = [r for r, g in zip(rows, greedy, strict=True) if g[0] != r["answer"]]
    notes = {"kind": "off-policy: gold answers for the prompts the base answers wrongly", "prompts": len(rows)}
    if len(wrong) < min_rows:
        wrong = rows
        notes["kind"] = "gold answers for every prompt (the base answers almost all correctly)"
    notes["rows"] = len(wrong)
    return [{"prompt": r["prompt"], "completion": r["answer"]} for r in wrong], notes


def mask_sparsity(masks: dict) -> tuple[float, int, int]:
    """``(sparsity, changed, numel)`` of update masks (name -> bool tensor), parameter-weighted."""
    from subnetviz.analysis.overlap import mask_overlap as overlap

    size = overlap([masks]).sizes.iloc[0]
    return 1.0 - float(size["density"]), int(size["count"]), int(size["numel"])


def mask_overlap(a: dict, b: dict) -> dict:
    """One-sided overlaps ``o1 = |A∩B|/|A|``, ``o2 = |A∩B|/|B|`` of two update masks and their
    chance values (uniformly random masks of the same sizes: the *other* mask's density), from
    :func:`subnetviz.analysis.overlap.mask_overlap`; an empty mask's overlap is 0."""
    from subnetviz.analysis.overlap import mask_overlap as overlap

    p = overlap([a, b]).pairwise.iloc[0]
    return {
        "o1": float(p["o1"]) if p["count_a"] else 0.0,
        "o2": float(p["o2"]) if p["count_b"] else 0.0,
        "chance_o1": float(p["o1_chance"]),
        "chance_o2": float(p["o2_chance"]),
        "intersection": int(p["intersection"]),
    }

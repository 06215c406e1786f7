"""Bigram-subnetwork mask training: optimizer steps per second, against plain training of the same model.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_bigram`` (add ``--cuda`` on a GPU machine).

Two models with random weights, each timed with the same batch and the same bigram target rows:

- ``demo``: a demo-zoo-shaped Llama (3 layers, d 96, MLP 384, vocab 32, 32 × 32 tokens per batch);
- ``gpt2-small``: GPT-2-small-shaped (12 layers, d 768, vocab 50257, 4 × 128 tokens per batch; the
  bigram table is counted from 1M random tokens so rows are sparse and gathered per batch).

``mask`` is :func:`subnetviz.bigram.train.train_bigram_mask` (functional_call with W ⊙ σ(βs), AdamW
on the 0.5 M / 85 M mask logits, the stopping-rule census every step); ``plain`` is ordinary training
of the same model's weights with the same soft-target loss (AdamW on every parameter): the baseline.
Times are medians over the timed steps, after one warm-up step.

``--zoo [ROOT]`` instead runs the paper's analyses on the demo zoo's base (default root:
``zoo_dir()``) with the zoo's exact bigram law: bigram subnetworks over a λ sweep and optimal
subnetworks, then size, fidelity r (full / subnetwork / random), share in the first MLP layer,
ablation Δ bits vs random, overlap ×chance with the optimal subnetwork, rotations and covariance
similarity. Tables are printed and written as CSV under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from subnetviz.bigram.stats import TokenCorpus, count_bigrams  # noqa: E402
from subnetviz.bigram.train import preset_config, soft_cross_entropy, train_bigram_mask  # noqa: E402


def build(kind: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if kind == "demo":
        cfg = LlamaConfig(
            vocab_size=32,
            hidden_size=96,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=32,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        return AutoModelForCausalLM.from_config(cfg), 32, 32
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=128)
    return AutoModelForCausalLM.from_config(cfg), 4, 128


def time_mask(model, corpus, table, batch: int, steps: int, device: str) -> list[float]:
    stamps: list[float] = []
    cfg = preset_config("fast", lam=10.0, batch_size=batch, max_steps=steps + 1)

    def on_step(step, total, rec):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_bigram_mask(model, corpus, table, cfg, device=device, on_step=on_step)
    return list(np.diff(stamps))


def time_plain(model, corpus, table, batch: int, steps: int, device: str) -> list[float]:
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        ids = corpus.ids[i * batch : (i + 1) * batch].to(device)
        tgt = table.probs_rows(ids)
        logits = model(ids).logits
        loss = soft_cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.requires_grad_(False)
    return times


def zoo_study(root, lambdas, optimal_lambdas, steps: int, out, beta_growth=None, train_only=False) -> None:
    """The paper's analyses on the zoo base (prints tables, writes CSVs under ``out``)."""
    from pathlib import Path

    import pandas as pd
    from transformers import AutoModelForCausalLM

    from subnetviz.bigram.evaluate import analyse_subnetwork, sparsity_fidelity_curve
    from subnetviz.bigram.job import zoo_doc_length
    from subnetviz.bigram.stats import load_transition_npz
    from subnetviz.config import zoo_dir
    from subnetviz.masks import load_mask_set, save_mask_set

    root = Path(root or zoo_dir())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    n_out = model.get_output_embeddings().weight.shape[0]
    table = load_transition_npz(root / "bigram.npz", n_out)
    seq = zoo_doc_length(root / "bigram.npz") or 24
    train, evalc = table.sample(16_000, seq, seed=0), table.sample(500, seq, seed=1)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print(
        f"zoo base {root / 'base'}: vocab {n_out}, chain of {table.seen()[:-1].sum()} tokens, "
        f"entropy rate {table.entropy():.3f} bits, sequences of {seq}"
    )
    masks, optimal = {}, {}
    for target, lams, store in (("bigram", lambdas, masks), ("optimal", optimal_lambdas, optimal)):
        for lam in lams:
            path = out / f"{target}_lambda{lam:g}.safetensors"
            if path.is_file():  # trained earlier (e.g. by a parallel --train-only run): reuse
                store[lam] = load_mask_set(path)
                continue
            t0 = time.perf_counter()
            cfg = preset_config("fast", lam=lam, max_steps=steps, beta_growth=beta_growth)
            res = train_bigram_mask(
                model,
                train,
                table if target == "bigram" else "optimal",
                cfg,
                device="cpu",
                on_step=lambda k, n, r: (
                    k % 250 or print(f"  step {k}: loss {r['loss']:.4f}, kept {r['kept']:.3%}", flush=True)
                ),
            )
            store[lam] = res.mask_set
            save_mask_set(path, res.mask_set)
            print(
                f"{target:<7} λ={lam:<5g} {res.steps} steps ({res.stopped_by}), {time.perf_counter() - t0:.0f} s, "
                f"kept {res.mask_set.density:.3%}",
                flush=True,
            )
    if train_only or not masks or not optimal:
        return
    heads, details = [], None
    for lam, ms in masks.items():
        # the paper's partner: the sparsest optimal subnetwork still larger than the bigram one
        larger = [o for o in optimal.values() if o.count > ms.count]
        partner = min(larger, key=lambda o: o.count) if larger else max(optimal.values(), key=lambda o: o.count)
        res = analyse_subnetwork(
            model,
            ms,
            table,
            evalc,
            optimal=partner,
            seeds=(0, 1, 2),
            residual_tokens=12_000 if lam == lambdas[len(lambdas) // 2] else None,
        )
        heads.append(res.headline)
        if res.residual is not None:
            details = (lam, res)
    head = pd.DataFrame(heads)
    head.to_csv(out / "headline.csv", index=False)
    print(head.round(4).to_string(index=False))
    curve = sparsity_fidelity_curve(model, [*masks.values(), *optimal.values()], table, evalc)
    curve.to_csv(out / "sparsity_fidelity.csv", index=False)
    print(curve.round(4).to_string(index=False))
    if details:
        lam, res = details
        print(f"\nλ={lam:g}: ablation (mean over seeds)")
        print(
            res.ablation.summary()[
                ["setting", "r_mean", "r_sd", "r_dropinf_mean", "bits_mean", "bits_sd", "kl_bits_mean", "delta_bits"]
            ]
            .round(4)
            .to_string(index=False)
        )
        print("shares (layer x block):")
        print(res.shares.pivot(index="layer", columns="block", values="share").round(3).to_string())
        print(res.overlap.to_frame().round(6).to_string(index=False))
        rot = res.residual.rotation.pivot_table(index=["model", "target"], columns="layer", values="angle_deg")
        print("median rotation (deg):")
        print(rot.round(1).to_string())
        cov = res.residual.covariance
        print("covariance similarity, layer 0 row:")
        print(cov[cov.layer_i == 0].pivot(index="model", columns="layer_j", values="similarity").round(3).to_string())
        res.ablation.to_frame().to_csv(out / "ablation.csv", index=False)
        res.shares.to_csv(out / "shares.csv", index=False)
        res.residual.rotation.to_csv(out / "rotation.csv", index=False)
        cov.to_csv(out / "covariance.csv", index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="run on the GPU (default: CPU, one thread)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per model (default 20 demo / 3 gpt2)")
    parser.add_argument("--models", default="demo,gpt2-small")
    parser.add_argument("--zoo", nargs="?", const="", default=None, help="run the analyses on the demo zoo")
    parser.add_argument("--lambdas", default="1,10,100")
    parser.add_argument("--optimal-lambdas", default="10,100")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--out", default="bigram-zoo-study")
    parser.add_argument("--beta-growth", type=float, default=None, help="override the fast preset's 1.003")
    parser.add_argument("--train-only", action="store_true", help="only train (and save) the masks")
    args = parser.parse_args(argv)
    if args.zoo is not None:
        torch.set_num_threads(1)
        lams = [float(x) for x in args.lambdas.split(",") if x]
        opt = [float(x) for x in args.optimal_lambdas.split(",") if x]
        zoo_study(args.zoo or None, lams, opt, args.max_steps, args.out, args.beta_growth, args.train_only)
        return
    device = "cuda" if args.cuda else "cpu"
    torch.set_num_threads(1)
    print(f"mask training vs plain training, device {device}" + ("" if args.cuda else ", 1 thread"))
    header = f"{'model':<11} {'batch':>7} {'mask params':>12} {'mask s/step':>12} {'steps/s':>8} {'plain s/step':>13} {'x plain':>8}"
    print(header)
    print("-" * len(header))
    for kind in args.models.split(","):
        model, batch, seq = build(kind)
        steps = args.steps or (20 if kind == "demo" else 3)
        v = model.config.vocab_size
        rng = np.random.default_rng(0)
        table = count_bigrams([rng.integers(0, v, 1_000_000)], v, source="random tokens")
        corpus = TokenCorpus(torch.from_numpy(rng.integers(0, v, ((steps + 2) * batch, seq))))
        from subnetviz.bigram.maskable import maskable_names

        n_mask = sum(dict(model.named_parameters())[n].numel() for n in maskable_names(model))
        t_mask = statistics.median(time_mask(model, corpus, table, batch, steps, device))
        t_plain = statistics.median(time_plain(model, corpus, table, batch, steps, device))
        print(
            f"{kind:<11} {f'{batch}x{seq}':>7} {n_mask:>12,} {t_mask:12.4f} {1 / t_mask:8.2f} {t_plain:13.4f} "
            f"{t_mask / t_plain:8.2f}"
        )


if __name__ == "__main__":
    main()

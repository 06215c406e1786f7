"""Behaviour KL throughput (tokens/s) on the demo base, CPU, one thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_behavior [--zoo DIR] [--prompts 400]``

Uses the demo zoo under ``SUBNETVIZ_HOME`` (``--zoo`` to point elsewhere): its base, grpo-s0 and
grpo-s0's update mask, on the held-out problem sets A and B. It reports, best of ``--repeat``:

- ``forward only``: one model's teacher-forced logits over every prompt (the floor);
- ``KL``: :func:`subnetviz.analysis.behavior.behavior` for one finetune, no revert (forward of the
  finetune + float64 KL against the base's cached logits), as tokens/s;
- ``revert``: one revert experiment (stream every tensor pair into the model, then KL), as seconds.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from subnetviz.analysis.behavior import behavior, encode, logits_of, read_prompts
    from subnetviz.analysis.revert import ModelBuilder, mask_selector
    from subnetviz.config import zoo_dir
    from subnetviz.masks import load_mask_set

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", help="a built demo zoo (default SUBNETVIZ_HOME/zoo)")
    p.add_argument("--prompts", type=int, default=400, help="prompts (from A_eval then B_eval)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = zoo_dir() if args.zoo is None else __import__("pathlib").Path(args.zoo)
    base, ft = root / "base", root / "grpo-s0"
    if not (base / "model.safetensors").exists() or not (ft / "model.safetensors").exists():
        raise SystemExit(f"no demo zoo base/grpo-s0 in {root}: run `python -m subnetviz demo build` first.")
    prompts = [q for f in ("A_eval", "B_eval") for q in read_prompts(root / "data" / f"{f}.jsonl")][: args.prompts]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    enc = encode(tok, prompts)
    n_tok = sum(len(e.ids) for e in enc)
    builder = ModelBuilder(str(base), str(ft), "cpu")
    n_params = sum(p.numel() for p in builder.model.parameters())
    print(
        f"demo base: {n_params:,} parameters; {len(prompts)} prompts, {n_tok} tokens; 1 thread, best of {args.repeat}"
    )

    def best(fn):
        t = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return t

    batches = [enc[i : i + args.batch_size] for i in range(0, len(enc), args.batch_size)]
    t_fwd = best(lambda: [logits_of(builder.model, b, "cpu") for b in batches])
    print(f"forward only (one model):          {t_fwd:7.3f} s  {n_tok / t_fwd:10.0f} tokens/s")
    rep = None

    def kl():
        nonlocal rep
        rep = behavior(
            str(base),
            [str(ft)],
            prompts,
            labels=["grpo-s0"],
            curve=None,
            random_control=False,
            batch_size=args.batch_size,
            device="cpu",
        )

    t_kl = best(kl)
    print(
        f"KL, one finetune (end to end):     {t_kl:7.3f} s  {n_tok / t_kl:10.0f} tokens/s "
        f"(KL loop alone {rep.tokens_per_second:.0f} tokens/s; forward KL {rep.summary['kl_forward'].iloc[0]:.4g} "
        f"nats/token)"
    )
    mask_file = root / "masks" / "grpo-seed0.safetensors"
    if mask_file.exists():
        masks = load_mask_set(mask_file).masks
        t_build = best(lambda: builder.build(mask_selector(masks, True)))
        print(
            f"revert inside grpo-s0's mask:      {t_build:7.3f} s to stream every tensor pair into the model "
            f"({t_build / t_fwd:.2f}x one forward pass over the prompts)"
        )


if __name__ == "__main__":
    main()

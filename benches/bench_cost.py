"""How well the pages' cost estimate (subnetviz.analysis.cost) tells the time of spectra and subspaces (CPU).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benches.bench_cost``

Before the Spectra page decomposes every matrix of a comparison it estimates the time from the headers and a
timing of the routine on a probe matrix, and asks (refuses, for a viewer) above ``SUBNETVIZ_CONFIRM_ABOVE_S``.
For a Qwen2.5-0.5B-shaped and a Qwen2.5-1.5B-shaped bf16 pair (``--layers`` layers each, 30 % of entries
changed) this prints, in one run:

- ``spectra``: the estimate, and the measured time of the decompositions (the update analysis with spectra and
  its random baseline, less the same analysis without spectra, measured in the same run);
- ``subspaces``: the estimate, and the measured :func:`~subnetviz.analysis.subspaces.analyze_subspaces` (K = 16;
  the embedding by randomized SVD);
- ``behaviour``: the estimate, and the measured :func:`~subnetviz.analysis.behavior.run_config` of a
  75 M-parameter Llama (8 layers of width 768, built here from its config with the demo zoo's tokenizer) and a
  copy of it with other weights, on 64 of the zoo's prompts with 3 curve points (skipped when the zoo is not
  built);
- ``bigram``: the estimate, and the measured Bigram page analysis (:func:`~subnetviz.bigram.job.analyse_mask_file`
  with the page's options) of a random 10 % mask of that 75 M-parameter model on the zoo's corpus;
- ``accuracy``: the estimate, and the measured held-out accuracy (greedy, 8 new tokens) of both models on the
  zoo's A_eval problems, as the Training comparison runs it;
- the ratio estimate / measured: the estimate's job is to tell a minute from an hour, so a ratio within
  0.5–2.5 is the goal; the probe's own time is printed too (paid once per process, and only for work
  over the SLOW bound).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

SHAPES = {  # name -> bench_streaming dims
    "0.5B": {},
    "1.5B": {"hidden": 1536, "inter": 8960, "heads": 12, "kv_heads": 2},
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one(name: str, dims: dict, layers: int, root: Path) -> list[tuple[str, float, float]]:
    from benches.bench_streaming import write_pair
    from subnetviz.analysis import cost
    from subnetviz.analysis.subspaces import SubspaceOptions, analyze_subspaces
    from subnetviz.analysis.update_pass import SpectraOptions, analyze_updates

    base, ft, _, params = write_pair(root / name, layers, dims=dims)
    spectra, sub = SpectraOptions(), SubspaceOptions(k=16)
    est_sp = cost.spectra_cost(base, [ft], spectra, "cpu")
    est_sub = cost.subspaces_cost(base, [ft], sub, "cpu")
    without, _ = timed(lambda: analyze_updates(base, [ft], spectra=SpectraOptions(enabled=False), device="cpu"))
    with_sp, _ = timed(lambda: analyze_updates(base, [ft], spectra=spectra, device="cpu"))
    t_sub, _ = timed(lambda: analyze_subspaces(base, [ft], labels=["ft"], options=sub, device="cpu"))
    print(
        f"{name}-shaped pair, {layers} layers, {params / 1e6:.0f} M parameters: spectra of {est_sp.matrices} "
        f"matrices (with the baseline), subspaces of {est_sub.matrices}",
        flush=True,
    )
    return [(f"{name} spectra", est_sp.seconds, with_sp - without), (f"{name} subspaces", est_sub.seconds, t_sub)]


def behaviour(root: Path) -> list[tuple[str, float, float]]:
    import json
    import shutil

    import transformers as T

    from subnetviz.analysis import cost
    from subnetviz.analysis.behavior import run_config
    from subnetviz.analysis.behavior_data import zoo_prompt_files
    from subnetviz.config import zoo_dir

    zoo = zoo_dir() / "base"
    if not (zoo / "tokenizer.json").exists():
        print("behaviour: skipped, the demo zoo is not built (python -m subnetviz demo build)")
        return []
    cfg = json.loads((zoo / "config.json").read_text())
    cfg.update(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=12,
        num_key_value_heads=12, head_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    config = T.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    for name, seed in (("base", 0), ("ft", 1)):
        torch.manual_seed(seed)
        T.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(root / name)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(zoo / f, root / name / f)
    run = {
        "base": str(root / "base"),
        "finetuned": [str(root / "ft")],
        "labels": ["ft"],
        "prompts": [str(zoo_prompt_files()[0])],
        "masks": {},
        "curve": [0.0, 0.5, 1.0],
        "limit": 64,
        "device": "cpu",
    }
    est = cost.behavior_cost(run)
    took, _ = timed(lambda: run_config(run))
    print(f"behaviour: 75 M-parameter Llama, 64 prompts, {est.matrices} forward passes", flush=True)
    return [("behaviour", est.seconds, took), *bigram(root / "base"), *accuracy(root / "base", root / "ft")]


def bigram(model: Path) -> list[tuple[str, float, float]]:
    from subnetviz.analysis import cost
    from subnetviz.bigram.job import analyse_mask_file
    from subnetviz.bigram.maskable import maskable_shapes, model_skeleton
    from subnetviz.bigram.store import PAGE_OPTIONS
    from subnetviz.masks import MaskSet, save_mask_set

    gen = torch.Generator().manual_seed(0)
    shapes = maskable_shapes(model_skeleton(str(model)))
    mask = save_mask_set(
        model.parent / "mask.safetensors", MaskSet({n: torch.rand(s, generator=gen) < 0.1 for n, s in shapes.items()})
    )
    est = cost.bigram_cost(str(model), "zoo")
    took, _ = timed(lambda: analyse_mask_file(str(model), str(mask), corpus="zoo", **PAGE_OPTIONS))
    print(f"bigram: 75 M-parameter Llama, random 10 % mask, {est.matrices} forward passes", flush=True)
    return [("bigram", est.seconds, took)]


def accuracy(*models: Path) -> list[tuple[str, float, float]]:
    from subnetviz.analysis import cost
    from subnetviz.config import zoo_dir
    from subnetviz.training.evaluate import evaluate_accuracy

    data = zoo_dir() / "data" / "A_eval.jsonl"
    est = cost.accuracy_cost([str(m) for m in models], str(data))
    took, _ = timed(lambda: [evaluate_accuracy(m, data) for m in models])
    print(f"accuracy: two 75 M-parameter Llamas, {data.name}, {est.matrices} generation steps", flush=True)
    return [("accuracy", est.seconds, took)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="layers of each pair (default 4)")
    ap.add_argument(
        "--parts", choices=["all", "decompositions", "forward"], default="all",
        help="the decompositions (spectra, subspaces), the forward passes (behaviour, bigram, accuracy), or all",
    )  # fmt: skip
    args = ap.parse_args()
    from subnetviz.analysis import cost

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        if args.parts != "forward":
            for name, dims in SHAPES.items():
                rows += one(name, dims, args.layers, Path(tmp))
        if args.parts != "decompositions":
            rows += behaviour(Path(tmp) / "behaviour")
    print(f"\nprobe {cost.PROBE}: seconds per unit {', '.join(f'{k[0]} {v:.3g}' for k, v in cost._rates.items())}")
    print(f"{'what':>16} {'estimated s':>12} {'measured s':>11} {'estimate / measured':>20}")
    for what, est, got in rows:
        print(f"{what:>16} {est:12.2f} {got:11.2f} {est / got:20.2f}")


if __name__ == "__main__":
    main()

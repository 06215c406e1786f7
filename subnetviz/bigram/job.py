"""The ``bigram_mask`` job: train a bigram (or optimal) subnetwork mask as an OS-process job.

Config (JSON)::

    model     local HF model folder, or a hub id already in the local HF cache (required)
    corpus    "zoo" (sequences sampled from the demo zoo's exact chain, zoo_dir()/bigram.npz,
              which is also the bigram table), a text file, a saved dataset folder
              (``Dataset.save_to_disk``, column "text") or ``hf:<name>[:<split>]`` from the local
              HF datasets cache; tokenized with the model's own tokenizer
    target    "bigram" (default) | "optimal" (the full model's own distribution)
    lambda    sparsity weight >= 0 (default 10)
    preset    "fast" (default) | "paper"
    steps     optional cap on optimizer steps (default: the preset's max_steps)
    seed      int (default 0)
    device    "auto" (default) | "cpu" | "cuda[:i]"
    seq_len   sequence length (default: the zoo's doc_length for "zoo", else 128; capped at the
              model's context)
    bigram    optional path of a bigram.npz table to use instead of the corpus' own counts
    eval_sequences  held-out sequences for the closing fidelity check (default 200)

Outputs under ``ctx.out_dir``: ``mask.safetensors`` (the binary mask, provenance in its metadata),
``metrics.json`` (steps, stop reason, kept fraction, final loss, fidelity r of the subnetwork and
of the full model on held-out sequences when the target is the bigram table) and ``curve.csv``.
:func:`validate_config` raises ConfigError before anything is started.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from subnetviz.config import resolve_device, zoo_dir
from subnetviz.errors import ConfigError, suggest

KEYS = {
    "kind",
    "model",
    "corpus",
    "target",
    "lambda",
    "preset",
    "steps",
    "seed",
    "device",
    "seq_len",
    "bigram",
    "eval_sequences",
    "name",
}


def zoo_bigram_path() -> Path:
    return zoo_dir() / "bigram.npz"


def zoo_doc_length(path) -> int | None:
    """The chain documents' length the zoo was pretrained on (``doc_length`` in bigram.npz), if stored."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return int(z["doc_length"]) if "doc_length" in z.files else None


def validate_config(config: dict) -> None:
    """ConfigError for a missing/unknown field, a path that does not exist, λ < 0, an unsupported
    architecture; reads only ``config.json`` of the model, never its weights."""
    from subnetviz.bigram.maskable import MODEL_TYPES
    from subnetviz.bigram.train import PRESETS, TARGETS

    if not isinstance(config, dict):
        raise ConfigError(f"bigram_mask config must be a dict, got {type(config).__name__}.")
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise ConfigError(f"bigram_mask config: unknown field {unknown[0]!r}.{suggest(unknown[0], KEYS)}")
    if "model" not in config:
        raise ConfigError("bigram_mask config: 'model' (a local model folder) is required.")
    from subnetviz.bigram.maskable import model_folder

    model = model_folder(str(config["model"]))
    cfg_file = model / "config.json"
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"{model}: model_type {model_type!r} has no maskable-weight table; supported: {sorted(MODEL_TYPES)}."
        )
    corpus = config.get("corpus", "zoo")
    if corpus == "zoo":
        bigram = Path(config.get("bigram") or zoo_bigram_path())
        if not bigram.is_file():
            raise ConfigError(f"{bigram}: the zoo's bigram table is missing; build the demo zoo first.")
    elif not (str(corpus).startswith("hf:") or Path(str(corpus)).expanduser().exists()):
        raise ConfigError(f"corpus {corpus!r}: not 'zoo', an existing text file, a saved dataset folder or hf:<name>.")
    elif config.get("bigram") and not Path(config["bigram"]).is_file():
        raise ConfigError(f"bigram table {config['bigram']!r} does not exist.")
    target = config.get("target", "bigram")
    if target not in TARGETS:
        raise ConfigError(f"target {target!r}; choose one of {TARGETS}.")
    lam = config.get("lambda", 10.0)
    if not isinstance(lam, int | float) or isinstance(lam, bool) or math.isnan(lam) or lam < 0:
        raise ConfigError(f"lambda = {lam!r}; the sparsity weight must be a number >= 0.")
    preset = config.get("preset", "fast")
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}; choose one of {sorted(PRESETS)}.{suggest(str(preset), PRESETS)}")
    for key in ("steps", "seq_len", "eval_sequences"):
        v = config.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{key} = {v!r}; must be a positive integer.")
    if not isinstance(config.get("seed", 0), int):
        raise ConfigError(f"seed = {config.get('seed')!r}; must be an integer.")
    resolve_device(config.get("device", "auto"))


def prepare(config: dict):
    """Load ``(model, train corpus, eval corpus, table)`` for a validated config (table may be None
    only for the optimal target on a text corpus without a bigram file)."""
    from subnetviz.bigram.maskable import load_local_model, model_folder
    from subnetviz.bigram.stats import (
        check_vocab,
        corpus_from_dataset,
        corpus_from_text,
        count_bigrams,
        load_transition_npz,
    )

    model_dir = model_folder(str(config["model"]))
    model = load_local_model(model_dir)
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 128)
    seq_len = int(config.get("seq_len") or 128)
    corpus = config.get("corpus", "zoo")
    if corpus == "zoo" and not config.get("seq_len"):
        seq_len = zoo_doc_length(config.get("bigram") or zoo_bigram_path()) or seq_len
    seq_len = min(seq_len, int(max_pos))
    n_eval = int(config.get("eval_sequences") or 200)
    n_out = int(model.get_output_embeddings().weight.shape[0])
    seed = int(config.get("seed", 0))
    if corpus == "zoo":
        table = load_transition_npz(config.get("bigram") or zoo_bigram_path(), n_out)
        n_train = 32 * 500
        train = table.sample(n_train, seq_len, seed=seed)
        evalc = table.sample(n_eval, seq_len, seed=seed + 10_000)
    else:
        path = Path(str(corpus)).expanduser()
        if path.is_file():
            full = corpus_from_text(path, model_dir, seq_len)
        else:  # a saved dataset folder or hf:<name>[:<split>] in the local cache
            full = corpus_from_dataset(str(corpus), model_dir, seq_len, max_tokens=5_000_000)
        train, evalc = full.split(n_eval) if len(full.ids) > 1 else (full, full)
        if config.get("bigram"):
            table = load_transition_npz(config["bigram"], n_out)
        else:
            table = count_bigrams(train.ids, n_out, source=str(corpus))
    check_vocab(table, model)
    table.check_ids(train.ids)
    return model, train, evalc, table


def run_job(config: dict, ctx) -> None:
    """Train the mask, report progress, write mask.safetensors, metrics.json and curve.csv."""
    from subnetviz.bigram.evaluate import bigram_surprisals, fidelity, score_tokens
    from subnetviz.bigram.maskable import masked_parameters
    from subnetviz.bigram.train import preset_config, train_bigram_mask
    from subnetviz.masks import save_mask_set

    validate_config(config)
    torch.manual_seed(int(config.get("seed", 0)))
    model, train, evalc, table = prepare(config)
    cfg = preset_config(
        config.get("preset", "fast"),
        lam=float(config.get("lambda", 10.0)),
        max_steps=config.get("steps"),
        seed=int(config.get("seed", 0)),
    )
    target = config.get("target", "bigram")
    ctx.log(
        f"bigram_mask: {config['model']} target={target} lambda={cfg.lam} preset={cfg.preset} "
        f"{len(train.ids)}x{train.ids.shape[1]} tokens, up to {cfg.max_steps} steps"
    )

    def on_step(step, total, rec):
        if step % 10 == 0 or step == 1:
            ctx.progress(step, total, loss=rec["loss"], kept=rec["kept"], undecided=rec["undecided"])

    result = train_bigram_mask(
        model,
        train,
        table if target == "bigram" else "optimal",
        cfg,
        device=config.get("device", "auto"),
        on_step=on_step,
        should_stop=ctx.should_stop,
        metadata={"model": str(config["model"]), "corpus": str(config.get("corpus", "zoo"))},
    )
    if result.stopped_by == "cancelled":
        ctx.log("cancelled: no mask written")
        return
    ms = result.mask_set
    save_mask_set(Path(ctx.out_dir) / "mask.safetensors", ms)
    result.curve.to_csv(Path(ctx.out_dir) / "curve.csv", index=False)
    metrics = {
        "steps": result.steps,
        "stopped_by": result.stopped_by,
        "kept": ms.count,
        "density": ms.density,
        "numel": ms.numel,
        "final_loss": float(result.curve["loss"].iloc[-1]) if len(result.curve) else None,
        "target": target,
        "lambda": cfg.lam,
        "preset": cfg.preset,
        "stable": bool(ms.metadata.get("stable", True)),
    }
    model = model.cpu()
    ref = bigram_surprisals(table, evalc)
    metrics["r_full"] = fidelity(score_tokens(model, evalc, table).surprisal_bits, ref)[0]
    sub = score_tokens(model, evalc, table, masked_parameters(model, ms, "keep"))
    metrics["r_subnetwork"], metrics["r_subnetwork_dropinf"] = fidelity(sub.surprisal_bits, ref)
    (Path(ctx.out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    ctx.progress(result.steps, result.steps, kept=ms.density, r_subnetwork=metrics["r_subnetwork"])
    ctx.log(f"done: {ms.count} of {ms.numel} weights kept ({ms.density:.4%}), r = {metrics['r_subnetwork']:.3f}")


def analyse_mask_file(
    model: str,
    mask: str,
    corpus: str = "zoo",
    optimal: str | None = None,
    bigram: str | None = None,
    eval_sequences: int = 200,
    seeds=(0, 1, 2),
    residual_tokens: int | None = 20_000,
    prompt: str | None = None,
    seed: int = 0,
    seq_len: int | None = None,
):
    """Everything the page shows for a saved mask, in one call: ``(SubnetworkAnalysis, generations)``.

    ``model``/``corpus``/``bigram``/``seq_len`` as in the job config; ``optimal``: a second mask file to overlap
    with; ``prompt``: text for the temperature-0.3 generations (default: the first 4 tokens of the
    first evaluation sequence); generations are None when the model folder has no tokenizer."""
    from subnetviz.bigram.evaluate import analyse_subnetwork, generations
    from subnetviz.bigram.maskable import check_mask_fits, model_folder
    from subnetviz.masks import load_mask_set

    config = {"model": model, "corpus": corpus, "eval_sequences": eval_sequences, "seed": seed}
    if bigram:
        config["bigram"] = bigram
    if seq_len:
        config["seq_len"] = seq_len
    validate_config(config)
    net, _, evalc, table = prepare(config)
    ms = load_mask_set(mask)
    check_mask_fits(net, ms, where=str(mask))
    opt = load_mask_set(optimal) if optimal else None
    if opt is not None:
        check_mask_fits(net, opt, where=str(optimal))
    result = analyse_subnetwork(net, ms, table, evalc, optimal=opt, seeds=tuple(seeds), residual_tokens=residual_tokens)
    gens = None
    model_dir = model_folder(str(model))
    if (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        text = prompt or tok.decode(evalc.ids[0, :4].tolist())
        gens = generations(net, tok, ms, text, n_new=min(20, evalc.ids.shape[1]), seeds=(0, 1, 2))
    return result, gens

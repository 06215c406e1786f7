"""The ``bigram_mask`` job: train a bigram (or optimal) subnetwork mask as an OS-process job.

Its config is a :class:`~subnetviz.bigram.config.BigramJobConfig` (JSON form described there).
Outputs under ``ctx.out_dir``: ``mask.safetensors`` (the binary mask, provenance in its metadata),
``metrics.json`` (steps, stop reason, kept fraction, final loss, fidelity r of the subnetwork and
of the full model on held-out sequences when the target is the bigram table) and ``curve.csv``.
:func:`validate_config` raises ConfigError before anything is started.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from subnetviz.bigram.config import BigramJobConfig, zoo_bigram_path

__all__ = ["BigramJobConfig", "analyse_mask_file", "prepare", "run_job", "validate_config", "zoo_bigram_path"]


def zoo_doc_length(path) -> int | None:
    """The chain documents' length the zoo was pretrained on (``doc_length`` in bigram.npz), if stored."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return int(z["doc_length"]) if "doc_length" in z.files else None


def sample_zoo_source(path, n_sequences: int, seq_len: int, seed: int = 0):
    """Sequences of the demo zoo's own text when ``bigram.npz`` holds a second-order source
    (``transition2`` P[next | previous two] and ``pair_stationary``, in ``token_ids`` order): the
    first pair from the pair law, then the chain; None for a first-order table (whose own samples
    are the text). The bigram table stays the target: the source's exact bigram marginal."""
    import numpy as np

    from subnetviz.bigram.stats import TokenCorpus

    with np.load(path, allow_pickle=False) as z:
        if "transition2" not in z.files:
            return None
        t2, pairs, ids = z["transition2"], z["pair_stationary"], z["token_ids"].astype(np.int64)
    k = len(ids)
    rng = np.random.default_rng(seed)
    cum = np.cumsum(t2.reshape(k * k, k), axis=1)
    out = np.empty((n_sequences, seq_len), dtype=np.int64)
    first = np.minimum((np.cumsum(pairs.reshape(-1))[None, :] <= rng.random(n_sequences)[:, None]).sum(1), k * k - 1)
    out[:, 0] = first // k
    if seq_len > 1:
        out[:, 1] = first % k
    for t in range(2, seq_len):
        u = rng.random(n_sequences)
        out[:, t] = np.minimum((cum[out[:, t - 2] * k + out[:, t - 1]] <= u[:, None]).sum(1), k - 1)
    return TokenCorpus(torch.from_numpy(ids[out]), f"sampled from the second-order source in {path}")


def validate_config(config: dict | BigramJobConfig) -> BigramJobConfig:
    """The config as a :class:`BigramJobConfig`, checked against the file system (the job kind's validator)."""
    cfg = config if isinstance(config, BigramJobConfig) else BigramJobConfig.from_dict(config)
    cfg.validate()
    return cfg


def require_model_memory(model_dir) -> None:
    """Refuse, from the headers, a model whose float32 copy and masked weights would not fit in memory."""
    from subnetviz.checkpoints.sources import float32_bytes
    from subnetviz.config import require_memory

    # the model in float32 and, while a mask is applied, its masked weights
    require_memory("The bigram analysis (the model in float32, twice)", 2 * float32_bytes(model_dir))


def prepare(config: BigramJobConfig | dict):
    """Load ``(model, train corpus, eval corpus, table)`` for a validated config (table may be None
    only for the optimal target on a text corpus without a bigram file). A model with a NaN or Inf
    weight is refused (:class:`~subnetviz.errors.NonFiniteError` naming the tensor)."""
    from subnetviz.analysis.revert import check_model_finite
    from subnetviz.bigram.maskable import load_local_model, model_folder
    from subnetviz.bigram.stats import (
        MAX_TOKENS,
        check_vocab,
        corpus_from_dataset,
        corpus_from_text,
        count_bigrams,
        load_transition_npz,
    )

    cfg = config if isinstance(config, BigramJobConfig) else BigramJobConfig.from_dict(config)
    model_dir = model_folder(cfg.model)
    require_model_memory(model_dir)
    model = load_local_model(model_dir)
    # NaN/Inf weights are refused by name: surprisals, mask training and the residual stream would all be NaN
    check_model_finite(model, str(model_dir))
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 128)
    seq_len = cfg.seq_len or 128
    if cfg.corpus == "zoo" and not cfg.seq_len:
        seq_len = zoo_doc_length(cfg.table_path) or seq_len
    seq_len = min(seq_len, int(max_pos))
    n_out = int(model.get_output_embeddings().weight.shape[0])
    if cfg.corpus != "zoo":  # the tokenizer's vocabulary: logits cut to it (Pythia pads 50277 to 50304 rows)
        n_out = min(n_out, tokenizer_size(model_dir))
    if cfg.corpus == "zoo":
        table = load_transition_npz(cfg.table_path, n_out)
        n_train = 32 * 500
        # the zoo's own text: a second-order source's samples, else the (first-order) table's
        train = sample_zoo_source(cfg.table_path, n_train, seq_len, cfg.seed)
        if train is None:
            train = table.sample(n_train, seq_len, seed=cfg.seed)
        evalc = sample_zoo_source(cfg.table_path, cfg.eval_sequences, seq_len, cfg.seed + 10_000)
        if evalc is None:
            evalc = table.sample(cfg.eval_sequences, seq_len, seed=cfg.seed + 10_000)
    else:
        path = Path(cfg.corpus).expanduser()
        if path.is_file():
            full = corpus_from_text(path, model_dir, seq_len)
        else:  # a saved dataset folder or hf:<name>[:<split>] in the local cache
            full = corpus_from_dataset(cfg.corpus, model_dir, seq_len, max_tokens=MAX_TOKENS)
        train, evalc = full.split(cfg.eval_sequences)  # (one sequence was both: fidelity on the training text)
        if cfg.bigram:
            table = load_transition_npz(cfg.bigram, n_out)
        else:
            table = count_bigrams(train.ids, n_out, source=cfg.corpus)
    check_vocab(table, model)
    table.check_ids(train.ids)
    return model, train, evalc, table


def tokenizer_size(model_dir) -> int:
    """How many tokens the model's tokenizer has (added tokens included), as the paper cuts the logits to; read
    from local files only, its folder's files checked (:func:`~subnetviz.checkpoints.models.load_tokenizer`)."""
    from subnetviz.checkpoints.models import load_tokenizer

    return len(load_tokenizer(model_dir))


def run_job(config: dict, ctx) -> None:
    """Train the mask, report progress, write mask.safetensors, metrics.json and curve.csv."""
    from subnetviz.bigram.evaluate import bigram_surprisals, checkpoint_name, fidelity, score_tokens
    from subnetviz.bigram.maskable import masked_parameters
    from subnetviz.bigram.train import preset_config, train_bigram_mask
    from subnetviz.masks import save_mask_set

    cfg = validate_config(config)
    torch.manual_seed(cfg.seed)
    model, train, evalc, table = prepare(cfg)
    mcfg = preset_config(cfg.preset, lam=float(cfg.lam), max_steps=cfg.steps, seed=cfg.seed)
    ctx.log(
        f"bigram_mask: {cfg.model} target={cfg.target} lambda={mcfg.lam} preset={mcfg.preset} "
        f"{len(train.ids)}x{train.ids.shape[1]} tokens, up to {mcfg.max_steps} steps"
    )

    def on_step(step, total, rec):
        if step % 10 == 0 or step == 1:
            ctx.progress(step, total, loss=rec["loss"], kept=rec["kept"], undecided=rec["undecided"])

    result = train_bigram_mask(
        model,
        train,
        table if cfg.target == "bigram" else "optimal",
        mcfg,
        device=cfg.device,
        on_step=on_step,
        should_stop=ctx.should_stop,
        metadata={"model": cfg.model, "corpus": cfg.corpus},
        tensorboard_dir=Path(ctx.run_dir) / "tensorboard",  # `tensorboard --logdir` on the runs folder
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
        "target": cfg.target,
        "lambda": mcfg.lam,
        "preset": mcfg.preset,
        "stable": bool(ms.metadata.get("stable", True)),
    }
    model = model.cpu()
    ref = bigram_surprisals(table, evalc)
    full = score_tokens(model, evalc, table, who=checkpoint_name(model))  # (NaN logits: one line, not r = NaN)
    metrics["r_full"] = fidelity(full.surprisal_bits, ref)[0]
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
    from subnetviz.bigram.maskable import check_mask_fits, model_folder, model_skeleton
    from subnetviz.masks import load_mask_set

    # the memory first, from the headers alone: the validation reads the model's tokenizer (for the zoo corpus)
    require_model_memory(model_folder(str(model)))
    cfg = validate_config(
        BigramJobConfig(
            model=str(model),
            corpus=corpus,
            eval_sequences=eval_sequences,
            seed=seed,
            bigram=bigram or None,
            seq_len=seq_len or None,
        )
    )
    ms = load_mask_set(mask)
    opt = load_mask_set(optimal) if optimal else None
    skeleton = model_skeleton(model)  # the masks are checked before the model is loaded (in float32)
    check_mask_fits(skeleton, ms, where=str(mask))
    if opt is not None:
        check_mask_fits(skeleton, opt, where=str(optimal))
    net, _, evalc, table = prepare(cfg)
    result = analyse_subnetwork(net, ms, table, evalc, optimal=opt, seeds=tuple(seeds), residual_tokens=residual_tokens)
    gens = None
    model_dir = model_folder(str(model))
    if (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file():
        from subnetviz.checkpoints.models import load_tokenizer

        tok = load_tokenizer(model_dir)
        text = prompt or tok.decode(evalc.ids[0, :4].tolist())
        gens = generations(net, tok, ms, text, n_new=min(20, evalc.ids.shape[1]), seeds=(0, 1, 2))
    return result, gens

"""The one place the tests build tiny models (random weights, nothing from a hub).

- :func:`tiny_config` / :func:`tiny_model`: one tiny Llama, GPT-2, GPT-NeoX or BERT, in memory
  (float32), from one set of size names (``hidden``, ``intermediate``, ``layers``, ``heads``, ...).
- :func:`save_model`: a model written by ``save_pretrained`` (bf16 by default, optionally sharded,
  optionally with a tokenizer beside it): a real Hugging Face folder.
- Checkpoint-zoo shapes (hidden 16, vocabulary 64): :func:`make_llama` (untied head; sharded on
  request), :func:`make_gpt2` (tied, Conv1D), :func:`make_neox` (fused interleaved QKV),
  :func:`make_bert`, and :func:`neox_config` for tests that build their own NeoX variant.
- Training shape: :func:`char_tokenizer` (``<pad> <bos> <eos> 0-9 + =``) and :func:`make_tiny_llama`
  (a bf16 Llama with that tokenizer: what the SFT / DPO / GRPO and supermask text tests train);
  :func:`make_tiny_moe`, a Qwen3-MoE with it (the routing of a mixture of experts).
- Bigram shape: :func:`bigram_model` (vocabulary 16, eager attention, no norm weight or bias at
  exactly its initial value, so a mask over them changes the output).
- Supermask shape: :func:`digits_mlp` (subnetviz's masked MLP, 64 pixels -> 128 -> 128 -> 10, one
  mask per task: not a transformer, but built here too so there is one place test models come from).

torch and transformers are imported inside the functions, so a runner test's worker starts fast.
"""

from __future__ import annotations

from pathlib import Path

HIDDEN, INTER, LAYERS, VOCAB, HEADS = 16, 32, 2, 64, 4  # the checkpoint zoo's shapes
BIGRAM_VOCAB = 16  # vocabulary of the bigram tests' planted chain and of their models
CHARS = list("0123456789+=")
FAMILIES = ("llama", "gpt2", "gpt_neox", "bert")


def tiny_config(
    family: str = "llama",
    *,
    vocab: int = VOCAB,
    hidden: int = HIDDEN,
    intermediate: int | None = None,
    layers: int = LAYERS,
    heads: int = HEADS,
    kv_heads: int | None = None,
    positions: int = 32,
    tie: bool | None = None,
    eager: bool = False,
    **extra,
):
    """A tiny ``family`` config. ``intermediate`` defaults to 2 × hidden (GPT-2: its own 4 × hidden);
    ``kv_heads`` (Llama only) and ``tie`` default to the family's own; ``extra`` goes to the config
    as is (token ids, ``rotary_pct``, ...)."""
    import transformers as T

    if tie is not None:
        extra["tie_word_embeddings"] = tie
    if eager:
        extra["attn_implementation"] = "eager"
    inter = intermediate if intermediate is not None else 2 * hidden
    if family == "llama":
        if kv_heads is not None:
            extra["num_key_value_heads"] = kv_heads
        return T.LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=positions,
            **extra,
        )
    if family == "gpt2":
        if intermediate is not None:
            extra["n_inner"] = intermediate
        return T.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, **extra
        )
    if family in ("gpt_neox", "bert"):
        cls = T.GPTNeoXConfig if family == "gpt_neox" else T.BertConfig
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=positions,
            **extra,
        )
    raise ValueError(f"tiny_config: unknown family {family!r}; one of {FAMILIES}")


def model_class(family: str):
    """The class a ``family`` test model is built as (BERT: masked LM; the rest: causal LM)."""
    import transformers as T

    classes = {
        "llama": T.LlamaForCausalLM,
        "gpt2": T.GPT2LMHeadModel,
        "gpt_neox": T.GPTNeoXForCausalLM,
        "bert": T.BertForMaskedLM,
    }
    if family not in classes:
        raise ValueError(f"model_class: unknown family {family!r}; one of {FAMILIES}")
    return classes[family]


def tiny_model(family: str = "llama", *, seed: int = 0, config=None, **size):
    """A random float32 ``family`` model built after ``torch.manual_seed(seed)`` (same seed, same
    weights); ``config`` (from :func:`tiny_config`) or the size names of :func:`tiny_config`."""
    import torch

    cfg = config if config is not None else tiny_config(family, **size)
    torch.manual_seed(seed)
    return model_class(family)(cfg)


def save_model(model, folder: str | Path, *, dtype=None, tokenizer=None, max_shard_size: str | None = None) -> Path:
    """``model`` cast to ``dtype`` (default bf16; ``False`` keeps it) and saved to ``folder``, the
    ``tokenizer`` beside it; ``max_shard_size`` writes a sharded folder (with its index)."""
    import torch

    folder = Path(folder)
    if dtype is not False:
        model = model.to(torch.bfloat16 if dtype is None else dtype)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


# --- checkpoint-zoo shapes (hidden 16, vocabulary 64), saved in bf16 ------------------------------


def make_llama(folder: Path, *, seed: int = 0, sharded: bool = False, tie: bool = False) -> Path:
    """Llama with GQA (4 heads, 2 KV heads); untied head unless ``tie``; ``sharded``: 8 KB shards."""
    model = tiny_model("llama", seed=seed, intermediate=INTER, kv_heads=2, tie=tie)
    return save_model(model, folder, max_shard_size="8KB" if sharded else None)


def make_gpt2(folder: Path, *, seed: int = 0) -> Path:
    """GPT-2 (tied head, Conv1D weights stored transposed)."""
    return save_model(tiny_model("gpt2", seed=seed, bos_token_id=0, eos_token_id=0), folder)


def neox_config():
    """The checkpoint zoo's GPT-NeoX config (Pythia-like: fused interleaved QKV)."""
    return tiny_config("gpt_neox", intermediate=INTER, bos_token_id=0, eos_token_id=0)


def make_neox(folder: Path, *, seed: int = 0) -> Path:
    return save_model(tiny_model("gpt_neox", seed=seed, config=neox_config()), folder)


def make_bert(folder: Path, *, seed: int = 0) -> Path:
    return save_model(tiny_model("bert", seed=seed, intermediate=INTER), folder)


# --- training shape: a character tokenizer over two-digit additions --------------------------------


def char_tokenizer():
    """One token per character of ``0-9 + =`` after ``<pad> <bos> <eos>`` (unknown -> ``<pad>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )


def make_tiny_llama(
    folder: str | Path,
    *,
    hidden: int = 32,
    intermediate: int = 64,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    dtype=None,
) -> Path:
    """A random Llama (untied, KV heads = heads) and its :func:`char_tokenizer` saved to ``folder``
    (bf16 unless ``dtype``); returns the folder."""
    tok = char_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = tiny_model(
        "llama",
        seed=seed,
        vocab=len(tok),
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        tie=False,
        **ids,
    )
    model.generation_config.pad_token_id = tok.pad_token_id
    return save_model(model, folder, dtype=dtype, tokenizer=tok)


def make_tiny_moe(folder: str | Path, *, experts: int = 4, top_k: int = 2, seed: int = 0) -> Path:
    """A random Qwen3-MoE (2 layers, every MLP a mixture of ``experts`` routed top-``top_k``, hidden 16) and its
    :func:`char_tokenizer`, saved in bf16 to ``folder``; returns the folder."""
    import torch
    import transformers as T

    tok = char_tokenizer()
    cfg = T.Qwen3MoeConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        moe_intermediate_size=8,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return save_model(T.Qwen3MoeForCausalLM(cfg), folder, tokenizer=tok)


# --- bigram shape: in memory, vocabulary 16 --------------------------------------------------------


def bigram_model(kind: str, vocab: int = BIGRAM_VOCAB, seed: int = 0):
    """A 2-layer, hidden-32 causal LM of family ``kind`` (gpt2, gpt_neox, llama) in eval mode; every
    1-D parameter (norms, biases) is moved off its initial value so masking one is visible."""
    import torch

    if kind not in ("gpt2", "gpt_neox", "llama"):
        raise ValueError(kind)
    size = {"hidden": 32, "heads": 4, "positions": 64, "eager": True, "vocab": vocab}
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if kind != "gpt2":
        size["intermediate"] = 64
    if kind == "llama":
        size["kv_heads"] = 2
    model = tiny_model(kind, seed=seed, **size, **ids).eval()
    with torch.no_grad():  # no parameter exactly 0 and non-trivial norms/biases: masks must be visible
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


# --- supermask shape: the continual-learning methods' task network on 8×8 digits -------------------


def digits_mlp(num_tasks: int = 3, density: float = 0.1, *, seed: int = 0, hidden: tuple[int, ...] = (128, 128)):
    """subnetviz's own :class:`~subnetviz.supermask.layers.MaskedMLP` (the network the supermask methods
    train, one mask per task) in the tests' shape: 64 pixels -> ``hidden`` -> 10 classes."""
    from subnetviz.supermask.layers import MaskedMLP

    return MaskedMLP((64, *hidden, 10), num_tasks=num_tasks, density=density, seed=seed)

"""Routing of mixture-of-experts models: which experts each token is sent to, in the base and in a finetune.

Work after the RL-subnetwork paper asks where an MoE finetune's change lives: in what the experts compute or in
which experts a token reaches (routing entropy and routing overlap per domain, and swapping the routers between
the base and the finetune). Teacher-forced on the behaviour analysis's prompts (the same gold tokens through both
models), a forward hook on every router records the k experts each real token is sent to: the indices the router
returns (transformers 5 routers return their logits, scores and chosen indices; DeepSeek-V3's group-limited,
bias-corrected choice included), or the top k of its logits where it returns logits only. Per model, experiment,
prompt set ("domain") and layer:

- ``jaccard``: the mean over tokens of |S_base ∩ S| / |S_base ∪ S|, S a token's k experts (1: the same experts);
- ``rerouted_share``: the share of tokens whose set of k experts differs from the base's;
- ``load_entropy`` / ``load_entropy_base``: the entropy (nats) of the expert load, the share of the tokens × k
  assignments each expert receives: ln E when every expert takes as many, 0 when one takes all (``experts`` = E).

The routers as a revert mask (:func:`router_masks`, ``--mask NAME=routers``): reverted inside, the finetune runs
with the base's routers; reverted outside, the base runs with the finetune's routers. If the first moves back to
the base (KL near 0) and the second does not, the change lives in the routers; the other way round, in the experts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from subnetviz.analysis.experts import is_router
from subnetviz.errors import ConfigError

COLUMNS = [
    "model",
    "experiment",
    "domain",
    "layer",
    "router",
    "experts",
    "top_k",
    "tokens",
    "jaccard",
    "rerouted_share",
    "load_entropy",
    "load_entropy_base",
]
ALL = "all prompt sets"  # the routing over every prompt, beside each set's
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_top_k", "top_k", "n_activated_experts")
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)\.")  # (DBRX numbers transformer.blocks.N)


def find_routers(model) -> list[tuple[int | None, str, torch.nn.Module, int, int]]:
    """(layer, module name, module, experts E, k) of each MoE router of ``model``: the ``gate`` or ``router``
    child of a block that also holds ``experts`` (every transformers 5 MoE family lays its blocks out so;
    JetMoE's holds them as ``input_linear`` / ``output_linear``; Qwen2-MoE's ``shared_expert_gate`` is a sigmoid on
    one expert, not a router). Empty for a dense model."""
    found = []
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for qual, block in model.named_modules():
        experts = getattr(block, "experts", None)
        if not isinstance(experts, torch.nn.Module) and not (
            isinstance(getattr(block, "input_linear", None), torch.nn.Module)
            and isinstance(getattr(block, "output_linear", None), torch.nn.Module)
        ):
            continue
        for attr in ("gate", "router"):
            router = getattr(block, attr, None)
            if not isinstance(router, torch.nn.Module):
                continue
            experts = _experts(router, block, cfg)
            k = _top_k(router, block, cfg)
            if experts and k and 0 < k <= experts:
                m = _LAYER.search(f"{qual}.")
                found.append((int(m.group(1)) if m else None, f"{qual}.{attr}".lstrip("."), router, experts, k))
            break
    return found


def _experts(router, block, cfg) -> int | None:
    for w in (getattr(router, "weight", None), getattr(getattr(router, "layer", None), "weight", None)):
        if isinstance(w, torch.Tensor) and w.dim() == 2:  # (DBRX's and JetMoE's routers hold theirs as .layer)
            return int(w.shape[0])
    for obj, key in ((router, "num_experts"), (block, "num_experts"), (cfg, "num_local_experts"), (cfg, "num_experts")):
        v = getattr(obj, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _top_k(router, block, cfg) -> int | None:
    for obj in (router, block):
        v = getattr(obj, "top_k", None)
        if isinstance(v, int) and v > 0:
            return v
    for key in _TOP_K_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def routing_bytes(config, tokens: int) -> int:
    """What the routing of ``tokens`` tokens holds at most, from a model's config (0 for a dense one): the k experts
    of every token in every layer, int32, for the base and the model being run."""
    experts = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    if not any(isinstance(getattr(config, key, None), int) and getattr(config, key) > 1 for key in experts):
        return 0  # (a dense config may carry a generation top_k)
    k = _top_k(None, None, config) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None) or 0
    return 2 * tokens * int(layers) * k * 4 if isinstance(layers, int) else 0


def _chosen(output, experts: int, k: int) -> torch.Tensor | None:
    """(N, k) expert indices from a router's output: the integer tensor it returns, else the top k of its
    (N, E) logits; None when neither is there."""
    parts = output if isinstance(output, tuple | list) else (output,)
    tensors = [t for t in parts if isinstance(t, torch.Tensor) and t.dim() >= 1]
    ints = [t for t in tensors if not t.is_floating_point() and t.dim() >= 2 and t.shape[-1] == k]
    if ints:
        return ints[0].reshape(-1, k)
    logits = [t for t in tensors if t.is_floating_point() and t.shape[-1] == experts]
    if logits:
        return logits[0].reshape(-1, experts).topk(k, dim=-1).indices
    return None


class RoutingTap:
    """Forward hooks on a model's routers that keep, per router, the k experts of every real token of the
    batches run while the tap is open (:meth:`expect` names each batch's prompt lengths first)."""

    def __init__(self, model):
        self.routers = find_routers(model)
        self.picks: dict[str, list[torch.Tensor]] = {name: [] for _, name, *_ in self.routers}
        self.unread: set[str] = set()  # routers whose output held no indices or logits of the batch's tokens
        self._valid: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> RoutingTap:
        for _, name, module, experts, k in self.routers:
            self._handles.append(module.register_forward_hook(self._hook(name, experts, k)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def expect(self, lengths: Sequence[int], width: int) -> None:
        """The next forward pass is a right-padded (len(lengths), width) batch: keep positions < each length."""
        self._valid = (torch.arange(width)[None, :] < torch.tensor(list(lengths))[:, None]).reshape(-1)

    def _hook(self, name: str, experts: int, k: int):
        def hook(module, inputs, output) -> None:
            chosen = _chosen(output, experts, k)
            if chosen is None or self._valid is None or chosen.shape[0] != self._valid.numel():
                self.unread.add(name)
                return
            self.picks[name].append(chosen[self._valid.to(chosen.device)].to(torch.int32).cpu())

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """Per router, (T, k) experts of every token since the last take, in batch order; then empty."""
        out = {n: torch.cat(v) if v else torch.empty(0, 1, dtype=torch.int32) for n, v in self.picks.items()}
        self.picks = {n: [] for n in self.picks}
        return out


def load_entropy(chosen: torch.Tensor, experts: int) -> float:
    """Entropy (nats) of the share of the (T, k) assignments ``chosen`` each of ``experts`` receives."""
    if not chosen.numel():
        return float("nan")
    counts = np.bincount(chosen.reshape(-1).numpy(), minlength=experts).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def jaccard(base: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Per token, |A ∩ B| / |A ∪ B| of two (T, k) expert sets (k distinct experts per row)."""
    inter = (base[:, :, None] == other[:, None, :]).any(-1).sum(-1).double()
    k = base.shape[1]
    return (inter / (2 * k - inter)).numpy()


def routing_rows(
    model: str,
    experiment: str,
    picks: dict[str, torch.Tensor],
    base_picks: dict[str, torch.Tensor],
    routers: Sequence,
    domains: Sequence[str],
) -> list[dict]:
    """One row per domain and router: ``picks`` against the base's ``base_picks`` (both per router, every token
    in prompt order); ``domains``: the domain of each token, in that order. With more than one domain, also a
    row over all of them (:data:`ALL`: the load's entropy is not a mean of the domains')."""
    dom = np.asarray(domains)
    sets = list(dict.fromkeys(domains))
    rows = []
    for layer, name, _, experts, k in routers:
        got, ref = picks.get(name), base_picks.get(name)
        if got is None or ref is None or got.shape != ref.shape or got.shape[0] != dom.size:
            continue
        jac = jaccard(ref, got)
        for d in sets + ([ALL] if len(sets) > 1 else []):
            sel = torch.from_numpy(dom == d) if d != ALL else torch.ones(dom.size, dtype=torch.bool)
            n = int(sel.sum())
            rows.append(
                {
                    "model": model,
                    "experiment": experiment,
                    "domain": d,
                    "layer": layer,
                    "router": name,
                    "experts": experts,
                    "top_k": k,
                    "tokens": n,
                    "jaccard": float(jac[sel.numpy()].mean()),
                    "rerouted_share": float((jac[sel.numpy()] < 1).mean()),
                    "load_entropy": load_entropy(got[sel], experts),
                    "load_entropy_base": load_entropy(ref[sel], experts),
                }
            )
    return rows


def overall(routing: pd.DataFrame) -> pd.DataFrame:
    """The rows over every prompt: those of :data:`ALL` where there are several prompt sets, else all rows."""
    whole = routing[routing["domain"] == ALL]
    return whole if len(whole) else routing


def routing_frame(rows: list[dict]) -> pd.DataFrame:
    """The routing table of :func:`routing_rows` (its columns also when it has no row: a dense model)."""
    return pd.DataFrame(rows, columns=COLUMNS)


def router_tensors(ck) -> list[str]:
    """The tensors checkpoint ``ck`` stores for its routers (module ``router`` in its naming table; a shared
    expert's gate is none: :func:`is_router`)."""
    table = ck.names_table
    return [n for n in ck.names if is_router((i := table.describe(n)).module, i.expert)]


def router_masks(builder) -> dict[str, torch.Tensor]:
    """Every router tensor of the base (module ``router`` in its naming table), whole: reverted inside, the
    finetune runs with the base's routers; outside, the base with the finetune's. Refused for a model with no
    router tensor (not a mixture of experts)."""
    routers = set(router_tensors(builder.ck_base))
    out = {
        at.names[0]: torch.ones(tuple(at.shape), dtype=torch.bool)
        for at in builder.aligned.values()
        if at.names[0] in routers
    }
    if not out:
        raise ConfigError(
            f"{builder.ck_base.spec}: no router tensors (module 'router' in its naming table): the 'routers' "
            "mask swaps a mixture-of-experts model's routers."
        )
    return out


router_masks.whole_tensors = True  # a random control of as many entries per tensor is the same mask: none is run

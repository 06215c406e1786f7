"""DeepSpeed ZeRO-2 / ZeRO-3 masked training (strategies ``zero2`` and ``zero3``), on GPUs or on CPU.

The run goes through the Hugging Face ``Trainer``'s DeepSpeed integration (``accelerate launch``
with accelerate's DeepSpeed plugin, see :func:`subnetviz.training.sharded.accelerate_config`).
On a machine without CUDA the launch sets ``DS_ACCELERATOR=cpu``: DeepSpeed's CPU accelerator
then trains over gloo (checked with DeepSpeed 0.19.8 and 2 processes).

The gradient mask and the masked decoupled weight decay are applied between DeepSpeed's backward
(which has reduced the gradients into this rank's partition) and its optimizer step by
:class:`ZeroGradientMask`:

- ZeRO-3 (parameters partitioned, ``ds_id``): ``deepspeed.utils.safe_get_local_grad`` /
  ``safe_set_local_grad`` on this rank's flat partition, masked with :func:`zero_partition`;
  decay on ``safe_get/set_local_fp32_param``.
- ZeRO-2 (parameters replicated, gradients and optimizer state partitioned): this rank's fragment
  of each parameter, the same fragment ``safe_set_full_grad`` / ``safe_set_full_fp32_param`` write
  (``param._hp_mapping``: the reduced gradient fragment and the fp32 master fragment, at
  ``lp_fragment_address`` in the flattened parameter), masked in place. The public
  ``safe_get_full_grad`` / ``safe_get_full_fp32_param`` would all-reduce every parameter at every
  step (measured: 211 vs 12 ms per step for the bench's model); they remain the fallback where a
  parameter has no such mapping or still holds a ``.grad``.

The decay, like AdamW's own, goes only to parameters a gradient reached in the step (on any process: a
post-accumulate-grad hook per parameter, the flags all-reduced), as the single-process path's
:class:`~subnetviz.training.masking.MaskedUpdateCallback` does: a vision-language model's vision tower, which a text
run never reaches, stays as the base stores it under every strategy.

With exact zeros outside the mask from the first step, AdamW's moments stay 0 there and the fp32
master weights never move; :func:`zero_full_state` gathers those masters after training for the
recorded bit-identity check, and :func:`zero_evidence` records that ZeRO really partitioned the
run (stage, partitioned parameters, local vs full sizes).
"""

from __future__ import annotations

import importlib.util
import os
import time

import torch

ZERO_STRATEGIES = ("zero2", "zero3")
ZERO_STAGE = {"zero2": 2, "zero3": 3}
_SHM_OP = "deepspeed_shm_comm"


def zero_available() -> str | None:
    """None when ZeRO can run here (DeepSpeed importable; CUDA GPUs or CPU), else why not."""
    if importlib.util.find_spec("deepspeed") is None:
        return "strategies zero2 / zero3 need DeepSpeed: pip install -r requirements-deepspeed.txt (see its notes)"
    return None


def prepare_cpu() -> None:
    """On CPU, before DeepSpeed's communication starts: do not build its shared-memory all-reduce op.

    DeepSpeed's torch backend otherwise JIT-compiles ``deepspeed_shm_comm`` with ninja and the C++
    compiler when it starts (minutes on a small machine, and a machine without a compiler fails
    there). That op serves only ``inference_all_reduce`` (tensor-parallel inference); ZeRO training's
    collectives (all-gather, reduce-scatter, all-reduce) go through ``torch.distributed`` on gloo.
    Marking it incompatible (DeepSpeed's own per-launch table of usable ops) skips the build. "On CPU" is what the
    launch chose (``DS_ACCELERATOR=cpu``: no GPU, or ``SUBNETVIZ_DEVICE=cpu`` on a machine with one), not whether
    torch sees a GPU.
    """
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[_SHM_OP] = False


def zero_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 master weights gathered from the ZeRO partitions, on CPU (a collective)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).detach().float().cpu() for n, p in model.named_parameters()}


def zero_partition(mask: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """ZeRO-3's local partition of a flattened parameter, for its mask: the flat mask padded to a
    multiple of ``world`` (padding False), chunk ``rank`` (1-D, ``ceil(numel / world)`` long)."""
    flat = mask.reshape(-1).to(torch.bool)
    part = -(-flat.numel() // world)
    padded = torch.zeros(part * world, dtype=torch.bool, device=flat.device)
    padded[: flat.numel()] = flat
    return padded[rank * part : (rank + 1) * part]


def zero_evidence(engine) -> dict:
    """Proof that ZeRO is active in a DeepSpeed engine: its stage and optimizer, how many parameters
    are partitioned (ZeRO-3), and this rank's share of the parameters (ZeRO-3) or of the fp32
    master weights (ZeRO-2) against the full size."""
    params = list(engine.module.parameters())
    stage = int(engine.zero_optimization_stage())
    opt = engine.optimizer
    full = int(sum(getattr(p, "ds_numel", p.numel()) for p in params))
    if stage == 3:
        local = int(sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")))
    else:
        local = int(sum(t.numel() for t in getattr(opt, "single_partition_of_fp32_groups", [])))
    return {
        "stage": stage,
        "optimizer": type(opt).__name__,
        "world_size": int(engine.dp_world_size),
        "parameters": len(params),
        "partitioned_parameters": sum(hasattr(p, "ds_id") for p in params),
        "local_numel": local,
        "full_numel": full,
        "device": str(engine.device),
    }


class ZeroGradientMask:
    """Masks the partitioned gradients of a DeepSpeed engine between its backward and its step, and
    applies decoupled weight decay only inside the mask to the fp32 master weights of the parameters a gradient
    reached (module docstring)."""

    def __init__(self, model, masks: dict[str, torch.Tensor], weight_decay: float = 0.0, decay_names=()):
        import torch.distributed as dist

        self.model = model
        self.masks = masks
        self.weight_decay = float(weight_decay)
        self.decay_names = set(decay_names)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._local: dict[str, torch.Tensor] = {}
        # All-True masks (a full run, or a fully selected tensor) leave the gradient as it is: no
        # get/set (under ZeRO-2 each get is an all-reduce). The masks are the same on every rank,
        # so every rank skips the same parameters.
        self._whole = {n for n, m in masks.items() if bool(m.all())}
        self._decayed = {n for n, m in masks.items() if n in self.decay_names and bool(m.any())}  # decay changes these
        # AdamW steps (and decays) only the parameters with a gradient, as the single-process path does
        # (masking.MaskedUpdateCallback): a vision-language model's vision tower, which a text run never reaches,
        # was decayed here and changed. Each parameter's hook records that a gradient reached it in this step.
        self._order = sorted(self._decayed) if self.weight_decay > 0 else []
        self._reached: set[str] = set()
        for name, p in model.named_parameters():
            if self.weight_decay > 0 and name in self._decayed:
                p.register_post_accumulate_grad_hook(lambda _p, name=name: self._reached.add(name))
        self.steps = 0  # how many times apply() ran (recorded with the evidence)
        self.seconds = 0.0  # time spent in apply() (the mask's and the decay's own cost)

    def _reached_anywhere(self) -> set[str]:
        """The decayed parameters a gradient reached in this step on any process (a collective: every process
        calls it), then forgotten for the next step. Over all processes, as one process with the whole batch
        sees it; and the same set on each, so each makes the same collective calls in :meth:`apply`."""
        if not self._order:
            return set()
        import torch.distributed as dist

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # (where the process group's collectives run)
        flags = torch.tensor([n in self._reached for n in self._order], dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._reached.clear()
        return {n for n, f in zip(self._order, flags.tolist(), strict=True) if f}

    def _mask_for(self, name: str, local: torch.Tensor) -> torch.Tensor:
        if name not in self._local:
            m = self.masks[name]
            if local.numel() == m.numel():
                lm = m.reshape(local.shape)
            else:
                lm = zero_partition(m, self.rank, self.world)[: local.numel()].reshape(local.shape)
            self._local[name] = lm.to(local.device)
        return self._local[name]

    def _apply_fragment(self, name: str, p, lr: float, decay: bool) -> bool:
        """ZeRO-1/2: mask (and, ``decay``, decay) this rank's fragment of ``p`` in place; False where the fragment
        is not reachable that way (then :meth:`apply` uses DeepSpeed's full-tensor API)."""
        hm = getattr(p, "_hp_mapping", False)
        if hm is False or p.grad is not None:
            return False
        if hm is None:  # no part of p in this rank's partition
            return True
        if hm.use_offload:  # subnetviz configures no offload; the full-tensor API's collectives would not match
            raise RuntimeError("ZeroGradientMask: optimizer offload is not supported")
        addr = hm.lp_fragment_address
        mask = self.masks[name].reshape(-1).narrow(0, addr.start, addr.numel)
        if name not in self._whole:
            g = hm.get_lp_grad_fragment(p._index_in_param_group)
            if g.numel() == p.numel() != addr.numel:  # a full-size accumulation buffer: its fragment
                g = g.reshape(-1).narrow(0, addr.start, addr.numel)
            m = mask.to(g.device).reshape(g.shape)
            g.data.copy_(torch.where(m, g, 0.0))
        if decay:
            w = hm.get_hp_fragment()
            factor = torch.tensor(1.0 - lr * self.weight_decay, dtype=w.dtype, device=w.device)
            w.data.mul_(torch.where(mask.to(w.device).reshape(w.shape), factor, 1.0))
        return True

    def apply(self, lr: float) -> None:
        """Mask every listed parameter's gradient (and decay its fp32 master weights inside the mask, where a
        gradient reached it in this step)."""
        from deepspeed import utils as dsu

        t0 = time.perf_counter()
        reached = self._reached_anywhere()
        for name, p in self.model.named_parameters():
            if name not in self.masks:
                continue
            local = hasattr(p, "ds_id")
            decay = name in reached
            if not local and self._apply_fragment(name, p, lr, decay):
                continue
            get_g, set_g = (
                (dsu.safe_get_local_grad, dsu.safe_set_local_grad)
                if local
                else (dsu.safe_get_full_grad, dsu.safe_set_full_grad)
            )
            g = get_g(p) if name not in self._whole else None
            if g is not None:
                # where(), not g * m: a NaN or Inf gradient must still become exactly 0 outside the mask.
                set_g(p, torch.where(self._mask_for(name, g), g, 0.0))
            if decay:
                get_w, set_w = (
                    (dsu.safe_get_local_fp32_param, dsu.safe_set_local_fp32_param)
                    if local
                    else (dsu.safe_get_full_fp32_param, dsu.safe_set_full_fp32_param)
                )
                w = get_w(p)
                factor = torch.tensor(1.0 - lr * self.weight_decay, dtype=w.dtype, device=w.device)
                # A factor of exactly 1.0 outside the mask: w * 1.0 == w bitwise.
                set_w(p, w * torch.where(self._mask_for(name, w), factor, 1.0))
        self.steps += 1
        self.seconds += time.perf_counter() - t0

    def install(self, accelerator, optimizer) -> None:
        """Run :meth:`apply` inside accelerate's DeepSpeed backward, between ``engine.backward`` and ``engine.step``."""
        wrapped = accelerator.deepspeed_engine_wrapped
        engine = wrapped.engine

        def backward(loss, sync_gradients=True, **kwargs):  # accelerate's DeepSpeedEngineWrapper.backward + apply
            engine.set_gradient_accumulation_boundary(is_boundary=sync_gradients)
            engine.backward(loss, **kwargs)
            if sync_gradients:
                self.apply(float(optimizer.param_groups[0]["lr"]))
                engine.step()

        wrapped.backward = backward

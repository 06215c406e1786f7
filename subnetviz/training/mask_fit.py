"""Whether a training mask fits its base, from headers alone, before anything is queued or launched.

The worker found a misfit only once it had loaded the model: the Launch form queued a run that failed seconds
later, and a multi-process launch ended in torch elastic's traceback. Kept apart from
:mod:`subnetviz.training.config` (which :mod:`subnetviz.training.masking` imports through ``sharded``): the check
matches names as the run does, with masking's own functions.
"""

from __future__ import annotations

from subnetviz.training.config import validate_config as _validate_fields


def validate_config(config: dict) -> None:
    """The ``train`` job kind's validator: the config's fields and data (:func:`~subnetviz.training.config.
    validate_config`), its processes against this machine's CPUs or GPUs where it runs here
    (:func:`~subnetviz.training.config.check_processes_fit`), then whether its mask fits the base
    (:func:`check_mask_fits`)."""
    from subnetviz.training.config import check_processes_fit, job_train_config

    _validate_fields(config)
    cfg = job_train_config(config)
    if not _jobs_may_go_to_ray():  # (on Ray the job declares its CPUs and GPUs: they are checked where its ranks start)
        check_processes_fit(cfg.strategy, cfg.num_processes)
    if cfg.mask is not None:
        check_mask_fits(cfg.base, cfg.mask_path)


def check_runs_here(config: dict) -> None:
    """A valid train config's processes against this machine (:func:`~subnetviz.training.config.
    check_processes_fit`), for a job the local backend runs (:func:`subnetviz.jobs.kinds.check_runs_here`): on a
    server that also offers a Ray cluster, :func:`validate_config` cannot tell where a job goes."""
    from subnetviz.training.config import check_processes_fit, job_train_config

    cfg = job_train_config(config)
    check_processes_fit(cfg.strategy, cfg.num_processes)


def _jobs_may_go_to_ray() -> bool:
    """Whether this server may send jobs to a Ray cluster (``SUBNETVIZ_RAY_ADDRESS``, ``SUBNETVIZ_RAY_ADDRESSES``):
    a job submitted here may then start its processes on another machine, which Ray picks for the CPUs and GPUs
    the job declares (:func:`~subnetviz.jobs.ray_backend.job_resources`). The launch checks them where they start
    (:func:`~subnetviz.training.run.launch_and_train`), and the Training form where the visitor computes here. A
    misconfigured list: none (the visitor's page says why)."""
    from subnetviz.config import ray_clusters
    from subnetviz.errors import ConfigError

    try:
        return any(ray_clusters().values())
    except ConfigError:
        return False


def check_mask_fits(base: str, mask: str) -> None:
    """Refuse, in one line (:class:`MaskError` naming the file), a training mask whose tensor names or shapes do
    not fit the base, from headers alone: the mask file's names and shapes (a bit-packed mask's stored bytes must
    hold the entries of its shape: one a byte short was queued, then failed as the run read it), and the base's
    parameters built on the meta device from its config.json (no weights read). The names are matched as the run matches them
    (:mod:`subnetviz.training.masking`: another model prefix, tied heads, experts stored one by one), on meta
    tensors. What needs the mask's values is left to the run: whether it selects any entry, and its entries of a
    vision or audio tower the model does not build (a Llama-4 release's: left out where all zero, else refused).
    Entries of the model's buffers (DeepSeek-V3's ``e_score_correction_bias``) are left out, as the run leaves them
    out (:func:`~subnetviz.training.masking.without_buffers`); names that are neither a parameter nor a buffer are
    refused. A base whose config transformers cannot build is left to the run too, which loads it and says why."""
    import torch

    from subnetviz.checkpoints.naming import _tower, strip_prefix
    from subnetviz.masks import MaskSet, mask_file_shapes, validate_mask_set
    from subnetviz.training.masking import buffer_entries, fold_tied_heads, model_names, packed_masks

    where = f"mask {mask}"
    stored = mask_file_shapes(mask)
    built = _meta_model(base)
    if built is None:
        return
    shapes, tied = built
    with torch.device("meta"):  # (packed_masks builds each packed parameter's mask: on meta, no memory)
        masks = {n: torch.empty(s, dtype=torch.bool) for n, s in stored.items()}
        masks = packed_masks(fold_tied_heads(model_names(masks, shapes), tied), shapes)
    unbuilt = {k for k in masks if k not in shapes and _tower(strip_prefix(k))}  # (masking.without_unbuilt_towers)
    unbuilt |= set(buffer_entries(masks, shapes, getattr(tied, "buffers", ())))  # (masking.without_buffers)
    validate_mask_set(MaskSet({k: m for k, m in masks.items() if k not in unbuilt}), shapes, where=where)


def _meta_model(base: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    """The base's parameter shapes and tied heads (:func:`~subnetviz.training.masking.tied_heads`), from its
    model built on the meta device as the run builds it; None where its config.json builds none here (the run says
    why)."""
    from subnetviz.checkpoints.models import meta_model
    from subnetviz.errors import SubnetvizError
    from subnetviz.training.masking import tied_heads

    try:
        model = meta_model(base)  # (a vision-language model's class as the run builds it: Mistral-3, Qwen-VL)
    except (OSError, ValueError, KeyError, ImportError, SubnetvizError):
        return None
    # DTensors and ZeRO-3 do not apply here: every parameter has its full shape
    return {n: tuple(p.shape) for n, p in model.named_parameters()}, tied_heads(model)

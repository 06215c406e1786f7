"""Multi-process and sharded masked training: strategies, the launch, FSDP2 and ZeRO gradient masks.

A config's ``strategy`` says how its processes share the work:

- ``single``: one process (``num_processes`` must be 1).
- ``ddp``: ``num_processes`` replicas under torchrun (through ``accelerate launch``); the gradient
  hook of :class:`~subnetviz.training.masking.GradientMask` runs before the all-reduce.
- ``fsdp2``: every decoder layer and then the model are wrapped with ``fully_shard`` by
  :func:`shard_model`, in each process, *before* the model is handed to TRL. The Hugging Face
  ``Trainer`` refuses FSDP on CPU, and ``accelerate launch --use_fsdp --fsdp_version 2`` silently
  trains with DDP there, so subnetviz shards the model itself and builds the trainer in a
  one-process view of the world (:func:`single_process_view`): accelerate then neither wraps the
  model in DDP nor splits the data; FSDP2's reduce-scatter is the gradient sync, and each process
  reads its own shard of the data set. Masks are sharded like their parameter
  (``distribute_tensor(mask, p.device_mesh, p.placements).to_local()``) and applied to the local
  gradient shard in ``register_post_accumulate_grad_hook`` (``register_hook`` on a DTensor
  parameter never fires under FSDP2). :func:`fsdp2_evidence` records that FSDP2 was really active.
- ``zero2`` / ``zero3``: DeepSpeed ZeRO-2 / ZeRO-3 through the Trainer's DeepSpeed integration, on
  CUDA GPUs or on CPU (the launch sets ``DS_ACCELERATOR=cpu`` there: gloo); the mask is applied
  between DeepSpeed's backward and its step with ``deepspeed.utils.safe_get_local_grad`` /
  ``safe_set_local_grad`` on the partitioned parameters (:mod:`subnetviz.training.zero`).

``python -m subnetviz train --config`` (and a ``train`` job) launches ``accelerate launch
--config_file <accelerate_config.yaml> -m subnetviz train --config ...`` for every strategy but
``single``; the accelerate config written for the launch is kept in the run folder and beside the
trained model.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from subnetviz.errors import ConfigError
from subnetviz.training.config import STRATEGIES, train_device  # noqa: F401  (STRATEGIES re-exported)
from subnetviz.training.zero import (  # noqa: F401  (re-exported)
    ZERO_STAGE,
    ZERO_STRATEGIES,
    ZeroGradientMask,
    zero_available,
    zero_full_state,
    zero_partition,
)

ACCELERATE_CONFIG = "accelerate_config.yaml"
ACCELERATE_CONFIG_ENV = "SUBNETVIZ_ACCELERATE_CONFIG"  # the launched processes copy it beside the model
RUN_DIR_ENV = "SUBNETVIZ_RUN_DIR"  # the launched processes of a job report into this run folder
_WORLD_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")


LAUNCHED_ENV = "SUBNETVIZ_LAUNCHED"  # set for the launched processes: they never launch again
LAUNCH_ENV = "SUBNETVIZ_LAUNCH"  # the mark of one launch's processes (the launcher and its ranks)


def exit_rank(code: int) -> NoReturn:
    """End a launched rank that has finished its work without the interpreter's teardown (``os._exit``
    after flushing the logs and streams). A ZeRO-3 rank on CPU was aborted at exit ("terminate called
    without an active exception", SIGABRT: a C++ thread still joinable when its owner was destroyed) in
    ~1 of 6 runs after its model had been saved, with or without ``destroy_process_group`` first; the
    abort failed the whole run. Every file of the run is written and closed before this is called."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launched() -> bool:
    """True inside a process started by torchrun / ``accelerate launch``."""
    return os.environ.get(LAUNCHED_ENV) == "1" or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)


def process_device() -> str:
    """Where each process of a multi-process run trains: ``cuda`` (its own GPU, ``cuda:LOCAL_RANK``; nccl) when the
    run's device (:func:`~subnetviz.training.config.train_device`: ``SUBNETVIZ_DEVICE``, else CUDA when torch
    sees a GPU) is a GPU, else ``cpu`` (gloo; DeepSpeed's CPU accelerator). ``SUBNETVIZ_DEVICE=cpu`` on a machine
    with GPUs therefore trains on the CPU, as a single-process run does."""
    return "cuda" if train_device().startswith("cuda") else "cpu"


def needs_launch(strategy: str) -> bool:
    """Must this process start the run's processes (instead of training itself)?"""
    return strategy != "single" and not launched()


# --- the launch -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_config(strategy: str, num_processes: int, *, port: int | None = None) -> str:
    """The ``accelerate launch`` config (YAML text) for a strategy.

    ``ddp`` and ``fsdp2`` launch through torchrun (``MULTI_GPU``; where the run's device is the CPU, no CUDA GPU
    or ``SUBNETVIZ_DEVICE=cpu``, the trainer runs on CPU over gloo); for ``fsdp2`` subnetviz applies
    ``fully_shard`` itself in each process.
    ``zero2`` / ``zero3`` use accelerate's DeepSpeed plugin (stage 2 / 3, no offload).
    """
    lines = [
        f"# written by subnetviz for strategy {strategy}",
        "compute_environment: LOCAL_MACHINE",
        "debug: false",
        f"num_processes: {int(num_processes)}",
        "num_machines: 1",
        "machine_rank: 0",
        f"main_process_port: {int(port or _free_port())}",
        "main_training_function: main",
        "mixed_precision: 'no'",
        "rdzv_backend: static",
        "same_network: true",
        "use_cpu: false",
    ]
    if strategy in ZERO_STRATEGIES:
        lines += [
            "distributed_type: DEEPSPEED",
            "deepspeed_config:",
            f"  zero_stage: {ZERO_STAGE[strategy]}",
            "  offload_optimizer_device: none",
            "  offload_param_device: none",
        ]
        if strategy == "zero3":
            lines += ["  zero3_init_flag: false", "  zero3_save_16bit_model: true"]
    else:
        if strategy == "fsdp2":
            lines.append("# fully_shard is applied by subnetviz.training.sharded in each process (see its docstring)")
        lines.append("distributed_type: MULTI_GPU")
    return "\n".join(lines) + "\n"


RANK_FLOOR_BYTES = 660 << 20
"""Host memory one launched rank holds before its model: torch, transformers, TRL and their state (peak RSS of each
rank of a 2-process DDP run of the 0.4 M-parameter demo model, measured at ~660 MiB)."""

SHARDED_STATES = ("fsdp2", *ZERO_STRATEGIES)  # strategies whose ranks split the gradients and optimizer states


def rank_host_bytes(strategy: str, num_processes: int, params: int, *, device: str, reference: bool) -> int:
    """Host memory one rank of a run holds at least, for a model of ``params`` parameters: :data:`RANK_FLOOR_BYTES`
    and the model in float32 as every rank loads it whole (a second, frozen copy with ``reference``: DPO, GRPO with
    a KL term); on the CPU (``device``) also its float32 gradients and AdamW's two moments, each rank holding them
    whole under DDP and its 1/``num_processes`` share where the strategy splits them (:data:`SHARDED_STATES`). On
    CUDA those live on the rank's GPU."""
    weights = 4 * params * (2 if reference else 1)
    states = 0 if device.startswith("cuda") else 12 * params
    if strategy in SHARDED_STATES:
        states = -(-states // max(num_processes, 1))
    return RANK_FLOOR_BYTES + weights + states


# ``accelerate launch`` (its ``main`` reads the arguments after ``-c``), ending without a traceback when it is
# stopped: torch elastic raises SignalException out of the launcher after it has stopped the ranks, and its
# 30-line traceback read like a crash under the one line an interrupted run ends with.
_LAUNCHER = """import sys
from accelerate.commands.launch import main
from torch.distributed.elastic.multiprocessing.api import SignalException
try:
    main()
except SignalException as exc:
    sys.exit(128 + int(exc.sigval))
"""


def launch(strategy: str, num_processes: int, config_file: Path, folder: Path, *, run_dir: Path | None = None) -> int:
    """Start the run's processes: ``accelerate launch --config_file folder/accelerate_config.yaml
    -m subnetviz train --config config_file`` (:data:`_LAUNCHER`); waits and returns their exit code.

    Output goes to this process's stdout/stderr (a job's ``log.txt``). ``run_dir``: the job's run
    folder, where the launched rank 0 reports progress and reads the cancel flag. Interrupted (Ctrl-C, or a
    SIGTERM the caller raises as KeyboardInterrupt), it stops every process of the launch before it re-raises
    (:func:`stop_launch`); on every way out it kills what is left of them, so no rank goes on training for a run
    that has ended.
    """
    if strategy in ZERO_STRATEGIES and (why := zero_available()):
        raise ConfigError(why + ".")
    folder.mkdir(parents=True, exist_ok=True)
    yaml = folder / ACCELERATE_CONFIG
    yaml.write_text(accelerate_config(strategy, num_processes))
    env = {k: v for k, v in os.environ.items() if k not in _WORLD_ENV}
    env[ACCELERATE_CONFIG_ENV] = str(yaml)
    env[LAUNCHED_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    if strategy in ZERO_STRATEGIES and process_device() == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator (gloo); it would probe for CUDA otherwise
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    if run_dir is not None:
        env[RUN_DIR_ENV] = str(run_dir)
    cmd = [
        sys.executable,
        "-c",
        _LAUNCHER,
        "--config_file",
        str(yaml),
        "-m",
        "subnetviz",
        "train",
        "--config",
        str(config_file),
    ]
    shown = " ".join([sys.executable, "-m", "accelerate.commands.launch", *cmd[3:]])  # (what _LAUNCHER runs)
    print(f"launching {num_processes} processes ({strategy}): {shown}", flush=True)
    sys.stdout.flush()
    # Every process of this launch carries the mark (the ranks inherit the launcher's environment), so that
    # none outlives it: torch elastic starts each rank in a session of its own, and a SIGTERM to this process
    # left them training and publishing a model after the command had ended.
    mark = env[LAUNCH_ENV] = f"{os.getpid()}-{secrets.token_hex(4)}"
    # A session of its own: a terminal's Ctrl-C reaches this process alone, which stops the launch once
    # (two SIGINTs to the launcher cut torch elastic's own shutdown of the ranks short).
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C, or a SIGTERM the caller turned into KeyboardInterrupt
        stop_launch(proc, mark)
        raise
    finally:
        kill_launched(mark)  # a rank that outlived its launcher


STOP_GRACE_S = 20.0  # how long an interrupted launch's ranks get to remove their work folders before SIGKILL


def stop_launch(proc: subprocess.Popen, mark: str, grace: float | None = None) -> None:
    """Stop a launch: SIGINT to the launcher, which passes it on to every rank (each removes its unfinished work
    folder and TensorBoard events, as on Ctrl-C), then after ``grace`` seconds, or at a second interrupt, SIGKILL
    to every process of the launch (``grace`` default :data:`STOP_GRACE_S`). Returns once none is left."""
    grace = STOP_GRACE_S if grace is None else grace
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    try:
        while time.monotonic() < deadline and (proc.poll() is None or _launched_processes(mark)):
            time.sleep(0.1)
    finally:
        kill_launched(mark)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _launched_processes(mark: str) -> list:
    """The processes that carry ``mark`` in their :data:`LAUNCH_ENV` (this process and its ancestors spared)."""
    import psutil

    try:
        spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    except psutil.Error:
        spared = {os.getpid()}
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in spared and proc.environ().get(LAUNCH_ENV) == mark:
                found.append(proc)
        except (psutil.Error, OSError):  # gone meanwhile, or another user's
            continue
    return found


def kill_launched(mark: str) -> int:
    """SIGKILL every process of the launch marked ``mark``; returns how many."""
    import psutil

    procs = _launched_processes(mark)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


# --- FSDP2 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's place in a launched run."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    """Join the launched run's process group (gloo on CPU, nccl on CUDA: :func:`process_device`) and return this
    process's place."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:  # one process started without torchrun: a group of one
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if process_device() == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def shard_model(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the whole model, over a 1-D mesh of every process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = process_device()
    if device == "cuda":
        model.to(f"cuda:{world.local_rank}")
    mesh = init_device_mesh(device, (world.size,))
    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model._is_fsdp_managed_module = True  # transformers' generate() then keeps the ranks in step (synced_gpus)
    return model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the children of its largest ModuleList (Llama layers, GPT-2 h, ...)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


@contextlib.contextmanager
def single_process_view():
    """Hide the launch's world variables while a trainer is built, so accelerate sees one process
    (no DDP wrapper, no data split): FSDP2 does the synchronisation. The process group stays up."""
    hidden = {k: os.environ.pop(k) for k in _WORLD_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def fsdp2_evidence(model: torch.nn.Module) -> dict:
    """Proof that FSDP2 is active: DTensor parameters sharded over the mesh, local vs full sizes."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    params = list(model.parameters())
    dt = [p for p in params if isinstance(p, DTensor)]
    return {
        "fsdp_modules": sum(isinstance(m, FSDPModule) for m in model.modules()),
        "parameters": len(params),
        "dtensor_parameters": len(dt),
        "sharded_parameters": sum(any(isinstance(pl, Shard) for pl in p.placements) for p in dt),
        "mesh_size": int(dt[0].device_mesh.size()) if dt else 1,
        "local_numel": int(sum(p.to_local().numel() for p in dt)),
        "full_numel": int(sum(p.numel() for p in params)),
    }


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gathered full state dict on CPU (a collective: every process calls it; rank 0 gets it, others {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of ``mask`` (the parameter's full shape) that this process holds of ``param``.

    A DTensor parameter: the mask distributed with the parameter's mesh and placements, local part.
    A plain parameter: the mask itself on the parameter's device.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        m = mask.to(device=param.to_local().device, dtype=torch.bool)
        return distribute_tensor(m, param.device_mesh, param.placements).to_local()
    return mask.to(device=param.device, dtype=torch.bool)


def any_rank(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a collective: all processes call it)."""
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=process_device())  # (nccl takes CUDA tensors, gloo CPU ones)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _reduction(name: str) -> str:
    """How a logged metric combines over processes, as the trainers combine them when they see every process
    (DDP gathers first): ``sum`` for counts of the whole batch (``num_tokens``), ``max`` / ``min`` for extremes
    (``completions/max_length``, ``clip_ratio/high_max``), ``mean`` for the rest (loss, accuracy, rewards,
    entropy; grad_norm, learning_rate and epoch are the same on every process)."""
    last = name.rsplit("/", 1)[-1]
    if last == "num_tokens":
        return "sum"
    for kind in ("max", "min"):
        if last == kind or last.startswith(f"{kind}_") or last.endswith(f"_{kind}"):
            return kind
    return "mean"


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One step's logged metrics of this process combined with every other's (a collective: all processes call
    it, once per log). Under FSDP2 each process's trainer sees only its own shard of the batch (it is built in
    a one-process view), so its loss, token count and rewards are its own; this puts them together as a DDP
    run's trainer does (:func:`_reduction`). A metric only some processes logged combines over those."""
    import torch.distributed as dist

    every: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, metrics)
    out = {}
    for name in metrics:
        values = [m[name] for m in every if name in m]
        how = _reduction(name)
        if how == "sum":
            out[name] = float(sum(values))
        elif how == "max":
            out[name] = float(max(values))
        elif how == "min":
            out[name] = float(min(values))
        else:
            out[name] = float(sum(values) / len(values))
    return out

"""PPO runs of the drivers grid, with TRL's own ``PPOTrainer``, in a child process.

The pinned TRL (1.16) has no PPO trainer; the last TRL with one is 0.29.1 (``trl.experimental.ppo``).
One Python environment holds one ``trl``, so ``scripts/bootstrap.sh`` installs 0.29.1
*without dependencies* into its own folder, ``<venv>/overlays/trl-ppo`` (it runs on the pinned
transformers / accelerate / datasets), and a PPO run trains in a child process that puts that folder
first on ``PYTHONPATH`` (``python -m subnetviz.experiments.ppo REQUEST.json``). Everything else in
the grid keeps TRL 1.16.

Same task and reward as GRPO and RLOO: the zoo's problem set (``prompt``/``answer`` rows) and the
exact-match rule, given to TRL's PPO through its reward-model interface (:class:`ExactMatchReward`:
TRL calls ``getattr(model, model.base_model_prefix)`` for hidden states and ``model.score`` on the
last of them, and reads the score at each sequence's last token). The value model is TRL's usual
choice, a sequence classifier (one label) started from the base's weights.

Fixed choices (why): ``num_ppo_epochs=1`` and ``num_mini_batches=1``, so that a PPO "step" is one
rollout batch and one optimizer step, as for GRPO/RLOO in this grid (TRL's default of 4 epochs would
make a PPO step 4 updates); ``kl_coef`` = the spec's β; ``stop_token="eos"`` (the completion ends at
the tokenizer's EOS, like the other trainers' completions); the learning-rate schedule is the request's, the
other runs' :class:`~subnetviz.training.config.TrainConfig` default, constant (a linear schedule, used before,
decayed the rate to 0 over the run, and the PPO point came out sparser than at a constant rate). TRL's PPO loop applies no
gradient clipping, so ``max_grad_norm`` has no effect on a PPO run (its row still records the spec's value).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

PPO_TRL = "0.29.1"
_TRAINER_FILE = Path("trl") / "experimental" / "ppo" / "ppo_trainer.py"


def overlay_dir() -> Path:
    """Where TRL 0.29.1 is installed for PPO (``SUBNETVIZ_PPO_TRL`` overrides the venv's folder)."""
    env = os.environ.get("SUBNETVIZ_PPO_TRL")
    return Path(env) if env else Path(sys.prefix) / "overlays" / "trl-ppo"


def overlay_version(folder: Path) -> str | None:
    """The version of the ``trl`` installed in ``folder``: its dist-info's, else the literal ``__version__`` of its
    ``trl/__init__.py``; None when neither says (read from the files: the folder is not imported here)."""
    from importlib.metadata import distributions

    for dist in distributions(name="trl", path=[str(folder)]):
        return dist.version
    init = folder / "trl" / "__init__.py"
    if init.is_file():
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(errors="replace"), re.M)
        if found:
            return found.group(1)
    return None


def unavailable_reason() -> str | None:
    """``None`` when PPO runs can start; else one line saying why not and how to fix it.

    The overlay's TRL version is checked here, before a grid starts: another TRL there failed only in the PPO
    child, after every other run of the grid had trained."""
    folder = overlay_dir()
    fix = f"run `bash scripts/bootstrap.sh` (it installs TRL {PPO_TRL} in {folder}, used only by PPO runs)."
    if not (folder / _TRAINER_FILE).is_file():
        return (
            f"TRL {PPO_TRL} (the last TRL with a PPOTrainer; the pinned 1.16 has none) is not installed in {folder}; "
            + fix
        )
    found = overlay_version(folder)
    if found != PPO_TRL:
        return f"the TRL in {folder} is {found or 'of unknown version'}, PPO runs need {PPO_TRL}; " + fix
    return None


# --- the exact-match rule as TRL's reward-model interface -----------------------------------------------
class _RuleBackbone(torch.nn.Module):
    def __init__(self, owner: ExactMatchReward):
        super().__init__()
        self._owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, input_ids, attention_mask, **_):
        return SimpleNamespace(hidden_states=(self._owner[0].rewards(input_ids, attention_mask),))


class ExactMatchReward(torch.nn.Module):
    """The exact-match reward of :func:`subnetviz.training.data.exact_match_reward` for TRL's PPO.

    ``prompts``: token ids of each prompt exactly as the queries hold them -> the answer. The
    backbone returns, for every position t of every sequence, 1.0 where the tokens after the prompt
    up to t decode (special tokens skipped, stripped) to the prompt's answer, else 0.0; TRL reads it
    at the sequence's last token. A sequence that starts with no known prompt is an error: the
    reward would be silently wrong otherwise.
    """

    base_model_prefix = "backbone"

    def __init__(self, tokenizer, prompts: dict[tuple[int, ...], str]):
        super().__init__()
        keys = sorted(prompts, key=len)
        for i, short in enumerate(keys):
            for long in keys[i + 1 :]:
                if long[: len(short)] == short:
                    raise ValueError(f"prompt {tokenizer.decode(short)!r} is a prefix of {tokenizer.decode(long)!r}")
        self.tokenizer = tokenizer
        self.prompts = dict(prompts)
        self.lengths = sorted({len(k) for k in keys})
        self.backbone = _RuleBackbone(self)
        self.score = torch.nn.Identity()

    def _answer(self, ids: list[int]) -> tuple[int, str]:
        for n in self.lengths:
            ans = self.prompts.get(tuple(ids[:n]))
            if ans is not None:
                return n, ans
        raise ValueError(f"PPO reward: no known prompt starts {self.tokenizer.decode(ids)!r}")

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((*input_ids.shape, 1), dtype=torch.float32, device=input_ids.device)
        for b in range(input_ids.shape[0]):
            pos = torch.nonzero(attention_mask[b]).flatten().tolist()
            ids = input_ids[b, pos].tolist()
            n, ans = self._answer(ids)
            for k in range(n, len(ids)):
                text = self.tokenizer.decode(ids[n : k + 1], skip_special_tokens=True)
                out[b, pos[k], 0] = 1.0 if text.strip() == str(ans).strip() else 0.0
        return out


# --- the child process ----------------------------------------------------------------------------------
def _train(req: dict) -> dict:
    """Train PPO as ``req`` says and save bf16 and fp32 copies of the same live weights.

    Returns the loop's seconds, the mean reward of each step's rollouts (TRL's ``objective/scores``) and the
    learning rate of each step (TRL's ``lr``)."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from subnetviz.training.data import read_jsonl
    from subnetviz.training.trainers import save_bf16

    if trl.__version__ != PPO_TRL:
        raise RuntimeError(f"PPO needs TRL {PPO_TRL} first on PYTHONPATH; got {trl.__version__} ({trl.__file__})")
    base, out = req["base"], Path(req["out"])
    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    rows = read_jsonl(req["data"], "grpo")
    if not all(isinstance(r["prompt"], str) for r in rows):
        raise ValueError(f"{req['data']}: PPO runs take plain-text prompts (no chat messages).")
    ids = [tok(r["prompt"])["input_ids"] for r in rows]
    prompts: dict[tuple[int, ...], str] = {}
    for i, r in zip(ids, rows, strict=True):
        if prompts.setdefault(tuple(i), r["answer"]) != r["answer"]:
            raise ValueError(f"{req['data']}: prompt {r['prompt']!r} has two different answers.")
    reward = ExactMatchReward(tok, prompts)
    torch.manual_seed(req["seed"])
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    value.config.pad_token_id = tok.pad_token_id
    data = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=str(out / "scratch"),
        learning_rate=req["learning_rate"],
        per_device_train_batch_size=req["batch_size"],
        local_rollout_forward_batch_size=req["batch_size"],
        total_episodes=req["steps"] * req["batch_size"],
        num_ppo_epochs=1,
        num_mini_batches=1,
        response_length=req["max_completion_length"],
        stop_token="eos",
        temperature=1.0,
        kl_coef=req["beta"],
        seed=req["seed"],
        optim=req["optimizer"],
        optim_args=f"momentum={req['momentum']}" if req.get("momentum") is not None else None,
        weight_decay=0.0,
        lr_scheduler_type=req["lr_scheduler_type"],
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=req.get("bf16", True),
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=data,
        value_model=value,
        eval_dataset=data.select(range(min(len(data), req["batch_size"]))),
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    shutil.rmtree(out / "scratch", ignore_errors=True)
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    lrs = [h["lr"] for h in trainer.state.log_history if "lr" in h]
    save_bf16(policy, tok, out / "bf16")
    state = {k: v.detach().to(torch.float32).cpu() for k, v in policy.state_dict().items()}
    policy.save_pretrained(out / "fp32", state_dict=state)
    tok.save_pretrained(out / "fp32")
    return {"train_seconds": seconds, "scores": scores, "lrs": lrs}


def train_ppo(request: dict, timeout: float = 3600.0) -> dict:
    """Run :func:`_train` in a child process with TRL 0.29.1 first on its path; its result.

    ``request``: base, data (a ``prompt``/``answer`` JSONL), out (the folder that receives ``bf16/``
    and ``fp32/``), seed, steps, learning_rate, lr_scheduler_type, batch_size, max_completion_length, beta,
    optimizer and (optional) momentum. A failed child is a one-line error that starts with its exception (the
    last line of its output); the tail of that output goes to this process's stderr (a job's log).
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"PPO run not started: {reason}")
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    req_file, res_file = out / "ppo_request.json", out / "ppo_result.json"
    req_file.write_text(json.dumps(request))
    res_file.unlink(missing_ok=True)  # an earlier run's result is never read as this one's
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(overlay_dir()), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env["SUBNETVIZ_TORCH_THREADS"] = str(torch.get_num_threads())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "subnetviz.experiments.ppo", str(req_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"PPO run stopped after {timeout:.0f} s without finishing (out: {out})") from None
    if proc.returncode != 0 or not res_file.is_file():
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        print(f"PPO child ({out}), the last lines of its output:", *lines[-15:], sep="\n", file=sys.stderr)
        cause = lines[-1].strip() if lines else "no output"
        raise RuntimeError(f"PPO run failed (exit {proc.returncode}): {cause}")
    return json.loads(res_file.read_text())


def main(argv: list[str]) -> int:
    torch.set_num_threads(int(os.environ.get("SUBNETVIZ_TORCH_THREADS", "1")))
    req_file = Path(argv[0])
    req = json.loads(req_file.read_text())
    result = _train(req)
    tmp = req_file.with_name("ppo_result.json.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(req_file.with_name("ppo_result.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

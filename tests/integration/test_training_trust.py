"""Masked training stays trustworthy where it used to break: a NaN inside the mask, two runs racing for
one output folder, tied / fp32 / fp16 bases, data outside the roots, and configs that failed with a
traceback after the model had loaded.

Every bitwise check reads the saved files on their integer view (independent of check_outside_mask).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subnetviz.masks import load_mask_set
from subnetviz.training.config import TrainConfig
from subnetviz.training.run import SUMMARY_FILE, train
from tests.models import make_tiny_llama
from tests.training_fixtures import write_addition_data, write_half_mask

INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    base = make_tiny_llama(root / "base", hidden=16, intermediate=32, heads=2)
    data = write_addition_data(root / "data", n=8)
    mask = write_half_mask(root / "half.safetensors", base, p=0.5, seed=1)
    return {"root": root, "base": base, "data": data, "mask": mask}


def _cfg(tiny, tmp_path, **kw) -> TrainConfig:
    d = dict(
        algorithm="sft",
        base=str(tiny["base"]),
        data=str(tiny["data"]["sft"]),
        output_dir=str(tmp_path / "out"),
        steps=2,
        learning_rate=1e-2,
        batch_size=4,
        seed=0,
    )
    d.update(kw)
    return TrainConfig(**d)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def _changed(base: Path, out: Path, masks: dict[str, torch.Tensor] | None) -> tuple[int, int]:
    """(changed inside, changed outside) on the stored bits; dtypes and names must match the base."""
    a, b = _tensors(base), _tensors(out)
    assert set(a) == set(b)
    inside = outside = 0
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        d = a[k].view(INT_VIEW[a[k].dtype]) != b[k].view(INT_VIEW[b[k].dtype])
        m = masks[k] if masks is not None else torch.ones_like(d)
        inside += int((d & m).sum())
        outside += int((d & ~m).sum())
    return inside, outside


# --- 1. a NaN / Inf inside the mask stays inside ---------------------------------------------------------------


def test_nan_gradient_inside_mask_leaves_adam_state_and_weights_outside_untouched():
    """Clipping with a NaN total norm scales every gradient by NaN; the callback re-zeroes outside after it."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from subnetviz.training.masking import MaskedUpdateCallback

    lin = torch.nn.Linear(3, 2, bias=False)
    before = lin.weight.detach().clone()
    m = torch.tensor([[True, False, True], [False, False, True]])
    cb = MaskedUpdateCallback({"weight": m}, 0.0, set())
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    cb.on_train_begin(args, TrainerState(), TrainerControl(), model=lin)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.0)
    for _ in range(2):
        opt.zero_grad()
        (lin(torch.tensor([[float("inf"), 1.0, 2.0]])).sum()).backward()
        torch.nn.utils.clip_grad_norm_(lin.parameters(), float("inf"))  # what transformers 5 always calls
        cb.on_pre_optimizer_step(args, TrainerState(), TrainerControl(), optimizer=opt)
        assert torch.equal(lin.weight.grad[~m], torch.zeros(int((~m).sum())))
        opt.step()
    st = opt.state[lin.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(st[key][~m], torch.zeros(int((~m).sum()))), key
    assert torch.equal(lin.weight.detach()[~m].view(torch.int32), before[~m].view(torch.int32))
    cb.on_train_end(args, TrainerState(), TrainerControl())


@pytest.fixture(scope="module")
def inf_base(tiny):
    """The tiny base with an Inf planted in ``model.norm.weight`` at an entry inside the mask."""
    import shutil

    dst = tiny["root"] / "base_inf"
    shutil.copytree(tiny["base"], dst)
    sd = load_file(dst / "model.safetensors")
    i = int(load_mask_set(tiny["mask"]).masks["model.norm.weight"].nonzero()[0])
    sd["model.norm.weight"][i] = float("inf")
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0])
def test_inf_inside_mask_stays_inside_and_loss_reads_nan(tiny, inf_base, tmp_path, max_grad_norm, capsys):
    res = train(_cfg(tiny, tmp_path, base=str(inf_base), mask=str(tiny["mask"]), max_grad_norm=max_grad_norm))
    out = Path(res.output_dir)
    masks = load_mask_set(tiny["mask"]).masks
    assert _changed(inf_base, out, masks)[1] == 0
    assert res.mask_check["outside_mask_identical"] and res.gathered_check["outside_mask_identical"]
    # A diverged run does not read as a perfect loss of 0: NaN, flagged, with a warning.
    assert math.isnan(res.metrics["loss"])
    assert res.nonfinite_steps == 2 and res.first_nonfinite_step == 1
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert math.isnan(summary["metrics"]["loss"]) and summary["nonfinite_steps"] == 2
    assert "diverged" in capsys.readouterr().err


def test_finite_run_is_not_flagged(tiny, tmp_path):
    res = train(_cfg(tiny, tmp_path, mask=str(tiny["mask"]), steps=1, output_dir=str(tmp_path / "new" / "out")))
    assert (tmp_path / "new" / "out" / "model.safetensors").is_file()  # its parent folder made on the way
    assert res.nonfinite_steps == 0 and res.first_nonfinite_step is None and math.isfinite(res.metrics["loss"])


# --- 2. runs that share an output_dir never destroy each other ---------------------------------------------------


class _Ctx:
    """A job context whose ``progress`` calls ``on_step`` (the test's hook into a running train())."""

    def __init__(self, on_step):
        self.on_step, self.lines = on_step, []

    def progress(self, step, total, **metrics):
        self.on_step(step)

    def log(self, message):
        self.lines.append(message)

    def should_stop(self):
        return False


def test_dead_runs_leftovers_are_cleared_live_runs_folder_is_not(tiny, tmp_path):
    import fcntl
    import os

    from subnetviz.errors import JobError

    out = tmp_path / "out"
    dead = tmp_path / ".out.999999-0123abcd.partial"  # a crashed run: folder and lock file, nobody holds it
    (dead / "checkpoints").mkdir(parents=True)
    (tmp_path / ".out.999999-0123abcd.partial.lock").write_text("999999\n")
    other = tmp_path / ".out.x.1-00000000.partial"  # another output_dir ("out.x"): not ours to judge
    other.mkdir()
    res = train(_cfg(tiny, tmp_path, steps=1))
    assert Path(res.output_dir) == out and (out / "model.safetensors").is_file()
    assert not dead.exists() and not (tmp_path / ".out.999999-0123abcd.partial.lock").exists()
    assert other.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == [other.name]  # no lock left
    # A live run (it holds its lock) at the same output_dir: refused before training, its folder kept.
    live = tmp_path / ".out2.4242-89abcdef.partial"
    (live / "checkpoints").mkdir(parents=True)
    fd = os.open(tmp_path / ".out2.4242-89abcdef.partial.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(JobError, match=r"out2: another training run \(pid 4242\) is writing it now"):
            train(_cfg(tiny, tmp_path, steps=1, output_dir=str(tmp_path / "out2")))
    finally:
        os.close(fd)
    assert (live / "checkpoints").is_dir() and not (tmp_path / "out2").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".out2.")]) == 2  # only the live run's


def test_output_dir_that_appears_during_the_run_is_not_replaced(tiny, tmp_path):
    from subnetviz.errors import JobError

    out = tmp_path / "out"

    def other_run_publishes(step):  # another run finished first
        if step == 1:
            (out / "checkpoints").mkdir(parents=True)
            (out / "model.safetensors").write_text("the other run's model")

    with pytest.raises(JobError, match=r"out appeared while this run trained .* kept in .*out\.unpublished-") as e:
        train(_cfg(tiny, tmp_path, steps=2, save_steps=[1]), _Ctx(other_run_publishes))
    assert "\n" not in str(e.value)
    assert (out / "model.safetensors").read_text() == "the other run's model"
    (kept,) = tmp_path.glob("out.unpublished-*")
    assert str(kept) in str(e.value)
    assert (kept / "model.safetensors").is_file() and (kept / "checkpoints" / "step-1").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no partial, no lock


def test_each_run_writes_its_own_tensorboard_folder(tiny, tmp_path):
    a = train(_cfg(tiny, tmp_path, steps=1, output_dir=str(tmp_path / "a")))
    import shutil

    shutil.rmtree(a.output_dir)  # the same output_dir again (e.g. after deleting a run)
    train(_cfg(tiny, tmp_path, steps=1, output_dir=str(tmp_path / "a")))
    runs = sorted(p for p in (tmp_path / "a.tensorboard").iterdir())
    assert len(runs) == 2 and all(p.is_dir() and list(p.rglob("events.out.tfevents.*")) for p in runs)
    assert not list((tmp_path / "a.tensorboard").glob("events.out.tfevents.*"))  # nothing mixed at the top


# --- 3 and 4. a model is saved as its base stores it: tied weights tied, each tensor in its stored dtype -------


def _make_base(kind: str, folder: Path) -> Path:
    """A tiny Llama with the char tokenizer: ``tied`` (bf16, tied head), ``fp32``, ``fp16``, or ``mixed``
    (fp32 with its norm weights stored in fp16)."""
    from tests.models import char_tokenizer, save_model, tiny_model

    tok = char_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    size = dict(vocab=len(tok), hidden=16, intermediate=32, layers=2, heads=2, kv_heads=2)
    model = tiny_model("llama", seed=0, tie=kind == "tied", **size, **ids)
    if kind == "mixed":
        state = {k: v.to(torch.float16 if "norm" in k else torch.float32) for k, v in model.state_dict().items()}
        model.save_pretrained(folder, state_dict=state)
        tok.save_pretrained(folder)
        return folder
    dtype = {"tied": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[kind]
    return save_model(model, folder, dtype=dtype, tokenizer=tok)


@pytest.mark.parametrize(
    ("kind", "masked"),
    [("tied", True), ("tied", False), ("fp32", True), ("fp32", False), ("fp16", True), ("mixed", True)],
)
def test_saved_like_the_base_tied_and_in_its_stored_dtypes(tiny, tmp_path, kind, masked):
    base = _make_base(kind, tmp_path / f"base_{kind}")
    stored = _tensors(base)
    assert ("lm_head.weight" in stored) == (kind != "tied")  # save_pretrained stores a tied head once
    mask = write_half_mask(tmp_path / "m.safetensors", base, p=0.5, seed=1) if masked else None
    cfg = _cfg(tiny, tmp_path, base=str(base), mask=str(mask) if mask else None, save_steps=[1])
    res = train(cfg)
    out = Path(res.output_dir)
    masks = load_mask_set(mask).masks if mask else None
    changed = {}
    for folder in (out, out / "checkpoints" / "step-1"):
        saved = _tensors(folder)
        assert {k: v.dtype for k, v in saved.items()} == {k: v.dtype for k, v in stored.items()}
        changed[folder] = _changed(base, folder, masks)
        assert changed[folder][1] == 0 and changed[folder][0] > 100
    assert res.mask_check["outside_mask_identical"] and res.mask_check["changed_inside"] == changed[out][0]
    conf = json.loads((out / "config.json").read_text())
    assert conf["tie_word_embeddings"] is (kind == "tied")
    assert conf["dtype"] == json.loads((base / "config.json").read_text())["dtype"]


def test_save_bf16_writes_a_tied_head_once(tmp_path):
    from transformers import AutoModelForCausalLM

    from subnetviz.training.trainers import save_bf16

    base = _make_base("tied", tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    saved = _tensors(save_bf16(model, None, tmp_path / "out"))
    assert set(saved) == set(_tensors(base)) and all(v.dtype == torch.bfloat16 for v in saved.values())


# --- 5. data files pass the roots check ----------------------------------------------------------------------------


def test_data_files_outside_enforced_roots_are_refused(tiny, tmp_path, monkeypatch):
    import shutil

    from subnetviz.errors import ConfigError, PathNotAllowedError
    from subnetviz.training.data import jsonl_objects, read_jsonl

    root = tmp_path / "rooted"
    base = shutil.copytree(tiny["base"], root / "base")
    inside = Path(shutil.copy(tiny["data"]["sft"], root / "sft.jsonl"))
    outside = Path(shutil.copy(tiny["data"]["sft"], tmp_path / "outside.jsonl"))
    evals = Path(shutil.copy(tiny["data"]["eval"], tmp_path / "eval_outside.jsonl"))
    (root / "eval.jsonl").symlink_to(evals)  # inside by name, outside by target
    ok = _cfg(tiny, tmp_path, base=str(base), data=str(inside), output_dir=str(root / "out"))
    monkeypatch.setenv("SUBNETVIZ_ROOTS", str(root))
    monkeypatch.setenv("SUBNETVIZ_ENFORCE_ROOTS", "1")
    ok.validate()
    with pytest.raises(ConfigError, match=r"data '.*outside.jsonl': leads outside the folders this server may read"):
        TrainConfig(**{**ok.to_dict(), "data": str(outside)}).validate()
    with pytest.raises(ConfigError, match=r"eval_data .*eval.jsonl.*: leads outside") as e:
        TrainConfig(**{**ok.to_dict(), "eval_data": str(root / "eval.jsonl")}).validate()
    assert "no such file" not in str(e.value) and "\n" not in str(e.value)
    for call in (lambda: read_jsonl(outside, "sft"), lambda: list(jsonl_objects(root / "eval.jsonl"))):
        with pytest.raises(PathNotAllowedError, match="data file .*: leads outside"):
            call()
    with pytest.raises(ConfigError, match="data '.*nowhere.jsonl': leads outside") as e:  # not even whether it exists
        TrainConfig(**{**ok.to_dict(), "data": str(tmp_path / "nowhere.jsonl")}).validate()
    assert "no such file" not in str(e.value)


# --- 6. configs that failed with a traceback after the model loaded: one line, before training ------------------


@pytest.mark.parametrize(
    "name", ["reduce_lr_on_plateau", "greedy", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay"]
)
def test_schedulers_that_need_what_a_run_does_not_pass_are_refused(tiny, tmp_path, name):
    from subnetviz.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"lr_scheduler_type '{name}' is not supported .*expected one of constant, "):
        train(_cfg(tiny, tmp_path, lr_scheduler_type=name))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["weight_decay", "beta", "max_grad_norm", "learning_rate"])
def test_an_infinite_hyperparameter_is_refused_before_training(tiny, tmp_path, name):
    """weight_decay: Infinity passed the check (v < 0 or v != v catches NaN only): the run diverged at step 2,
    was published, and its analysis ended on 2,880 NaN/Inf values."""
    from subnetviz.errors import ConfigError

    rule = "a number above 0 and below 1" if name == "learning_rate" else "a finite number >= 0"
    with pytest.raises(ConfigError, match=rf"{name} must be {rule}"):
        train(_cfg(tiny, tmp_path, **{name: float("inf")}))
    assert not (tmp_path / "out").exists()


def test_every_accepted_scheduler_runs(tiny, tmp_path):
    from subnetviz.training.config import SCHEDULERS

    for name in SCHEDULERS:
        res = train(_cfg(tiny, tmp_path, steps=2, lr_scheduler_type=name, output_dir=str(tmp_path / name)))
        assert res.steps_done == 2 and (Path(res.output_dir) / "model.safetensors").is_file(), name


def test_base_without_tokenizer_is_refused_up_front(tiny, tmp_path):
    import shutil

    from subnetviz.errors import ConfigError

    base = tmp_path / "notok"
    base.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny["base"] / f, base / f)
    with pytest.raises(ConfigError, match=r"base '.*notok' has no tokenizer \(no tokenizer.json or tokenizer_config"):
        _cfg(tiny, tmp_path, base=str(base)).validate()


def test_chat_rows_on_a_tokenizer_without_chat_template_are_refused_up_front(tiny, tmp_path):
    import shutil

    from subnetviz.errors import ConfigError

    chat = tmp_path / "chat.jsonl"
    row = {"prompt": [{"role": "user", "content": "1+2="}], "completion": [{"role": "assistant", "content": "3"}]}
    chat.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"data '.*chat.jsonl' holds chat messages, but the tokenizer of base .*"):
        train(_cfg(tiny, tmp_path, data=str(chat)))
    # With a chat template the same rows train.
    base = Path(shutil.copytree(tiny["base"], tmp_path / "base_chat"))
    (base / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{% endif %}"
    )
    res = train(_cfg(tiny, tmp_path, base=str(base), data=str(chat), steps=1))
    assert res.steps_done == 1

"""Supermask continual learning: top-k, straight-through gradient, the methods' invariants, metrics, jobs.

References are hand computations (2×2 gradient, small matrices), float64 NumPy recomputations of
mask statistics, and planted structure (independent random masks; a weight-decay leak that the
ExSSNeT guard must catch).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from subnetviz.errors import ConfigError
from subnetviz.jobs.context import JobContext
from subnetviz.supermask import job
from subnetviz.supermask.data import Task, make_benchmark, permuted_digits, split_digits, validate_tasks
from subnetviz.supermask.layers import MaskedConv2d, MaskedLinear, kept_count, topk_mask
from subnetviz.supermask.methods import MethodConfig, infer_task, knn_accuracies, run_method
from subnetviz.supermask.metrics import (
    ContinualResult,
    capacity_frame,
    forgetting,
    forgetting_with_untrained,
    forward_transfer,
    independent_capacity,
    owner_image,
    pairwise_overlap_frame,
)
from tests.models import digits_mlp

FAST = {"mask_epochs": 2, "weight_epochs": 2, "finetune_epochs": 3}


@pytest.fixture(scope="module")
def perm3():
    return permuted_digits(3, seed=0)


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "numel,density,expected", [(10, 0.25, 3), (10, 0.24, 2), (100, 0.05, 5), (7, 1e-6, 1), (9, 1.0, 9)]
)
def test_kept_count_rounds_half_up_and_keeps_at_least_one(numel, density, expected):
    assert kept_count(numel, density) == expected


@pytest.mark.parametrize("density", [0.02, 0.05, 0.1, 0.3, 0.5, 1.0])
def test_topk_keeps_exactly_the_requested_count_per_layer(density):
    mlp = digits_mlp(2, density, seed=1)
    conv = MaskedConv2d(3, 8, 3, num_tasks=1, density=density)
    layers = [*mlp.masked_layers().values(), conv]
    for layer in layers:
        for task in range(len(layer.scores)):
            m = layer.mask(task)
            assert m.dtype == torch.bool and m.shape == layer.weight.shape
            assert int(m.sum()) == kept_count(m.numel(), density)
            s = layer.scores[task].detach().abs()
            if density < 1.0:  # every kept |score| is at least every dropped one
                assert float(s[m].min()) >= float(s[~m].max())


def test_topk_with_ties_still_keeps_exact_count():
    scores = torch.tensor([[1.0, -1.0, 1.0], [1.0, 0.5, -1.0]])  # five tied |s| = 1
    m = topk_mask(scores, 0.5)  # 3 of 6
    assert int(m.sum()) == 3 and not bool(m[1, 1])


def test_straight_through_gradient_equals_hand_derivation_2x2():
    layer = MaskedLinear(2, 2, num_tasks=1, density=0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        layer.scores[0].copy_(torch.tensor([[0.9, 0.1], [-0.8, -0.2]]))  # |s| top-2: (0,0), (1,0)
    x = torch.tensor([[2.0, 3.0]])
    c = torch.tensor([[5.0, 7.0]])
    loss = (layer(x) * c).sum()
    loss.backward()
    # Forward by hand: W~ = [[1, 0], [-1, 0]], y = [2, -2], loss = 10 - 14 = -4.
    assert loss.item() == -4.0
    # dL/dW~_ij = c_i x_j = [[10, 15], [14, 21]];  dL/ds_ij = dL/dW~_ij * w_ij * sign(s_ij):
    # (0,0) 10·1·1, (0,1) 15·(-1)·1, (1,0) 14·(-1)·(-1), (1,1) 21·1·(-1). Dropped entries get gradient too.
    expected = torch.tensor([[10.0, -15.0], [14.0, -21.0]])
    assert torch.equal(layer.scores[0].grad, expected)


def test_signed_constant_weights_and_score_init_range():
    mlp = digits_mlp(3, 0.1, hidden=(128,))
    for layer in mlp.masked_layers().values():
        fan_in = layer.weight.shape[1]
        assert torch.allclose(layer.weight.abs(), torch.full_like(layer.weight, math.sqrt(2 / fan_in)))
        assert 0.3 < float((layer.weight > 0).float().mean()) < 0.7
        for s in layer.scores:
            assert s.detach().abs().max().item() <= 1 / math.sqrt(fan_in)


def test_per_task_batchnorm_keeps_separate_running_statistics():
    from subnetviz.supermask.layers import MultitaskNonAffineBN

    bn = MultitaskNonAffineBN(3, num_tasks=2, dims=1).train()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)) + 5.0
    bn(x)  # task 0 sees shifted data: one update from zero with BatchNorm's momentum 0.1
    torch.testing.assert_close(bn.bns[0].running_mean, 0.1 * x.mean(0))
    assert torch.equal(bn.bns[1].running_mean, torch.zeros(3))  # task 1 untouched
    assert not any(p.requires_grad for p in bn.parameters())  # non-affine: nothing shared to learn


# ---------------------------------------------------------------- methods


def _bits(t):
    return t.detach().view(torch.int32).clone()


def test_supsup_never_changes_any_weight_and_never_forgets(perm3):
    cfg = MethodConfig("supsup", density=0.1, **FAST)
    model = digits_mlp(3, 0.1)
    before = {n: _bits(m.weight) for n, m in model.masked_layers().items()}
    r = run_method(perm3, cfg, model=model)
    for n, m in model.masked_layers().items():
        assert torch.equal(_bits(m.weight), before[n]), n
    for j in range(3):  # every trained column is constant
        assert np.all(r.acc[j:, j] == r.acc[j, j])
    assert forgetting(r.acc) == 0.0


def test_exssnet_never_changes_a_weight_of_an_earlier_mask(perm3):
    cfg = MethodConfig("exssnet", density=0.1, **FAST)
    model = digits_mlp(3, 0.1)
    layers = model.masked_layers()
    snaps = []
    run_result = run_method(
        perm3, cfg, model=model, on_task=lambda t, _: snaps.append({n: _bits(m.weight) for n, m in layers.items()})
    )
    masks = run_result.masks
    final = {n: _bits(m.weight) for n, m in layers.items()}
    trained_somewhere = 0
    for t in range(3):
        for n in layers:
            used = torch.zeros_like(masks[0][n])
            for i in range(t + 1):
                used |= masks[i][n]
            assert torch.equal(final[n][used], snaps[t][n][used]), (t, n)  # U_t frozen after task t
            prev = snaps[t - 1][n] if t else None
            if prev is not None:
                trained_somewhere += int((snaps[t][n] != prev).sum())
    assert trained_somewhere > 0  # the weight phase really trained the exclusive weights
    assert forgetting(run_result.acc) == 0.0
    for j in range(3):
        assert np.all(run_result.acc[j:, j] == run_result.acc[j, j])


def test_exssnet_guard_raises_when_a_frozen_weight_moves(perm3, monkeypatch):
    real_adam = torch.optim.Adam
    monkeypatch.setattr(
        torch.optim, "Adam", lambda params, lr, weight_decay: real_adam(params, lr=lr, weight_decay=0.5)
    )
    with pytest.raises(RuntimeError, match="outside the editable set"):
        run_method(perm3, MethodConfig("exssnet", density=0.1, **FAST))


def test_ssnet_trains_weights_shared_with_earlier_masks(perm3):
    model = digits_mlp(3, 0.3)
    snaps = []
    layers = model.masked_layers()
    r = run_method(
        perm3,
        MethodConfig("ssnet", density=0.3, **FAST),
        model=model,
        on_task=lambda t, _: snaps.append({n: _bits(m.weight) for n, m in layers.items()}),
    )
    n = "layer2.weight"
    shared = r.masks[0][n] & r.masks[1][n]
    assert int((snaps[1][n] != snaps[0][n])[shared].sum()) > 0


@pytest.mark.slow
def test_end_to_end_each_method_on_three_permuted_tasks(perm3):
    runs = []
    for method, kkt in [
        ("finetune", False),
        ("supsup", False),
        ("ssnet", False),
        ("exssnet", False),
        ("exssnet", True),
    ]:
        r = run_method(perm3, MethodConfig(method, density=0.1, kkt=kkt, task_inference=method == "supsup", **FAST))
        assert r.acc.shape == (3, 3)
        assert np.all(np.diag(r.acc) > 0.5), (method, np.diag(r.acc))  # chance is 0.1
        runs.append(r)
    frames = ContinualResult("permuted-digits", tuple(runs)).to_frames()
    assert set(frames["runs"]["label"]) == {"finetune", "SupSup", "SSNeT", "ExSSNeT", "ExSSNeT+KKT"}
    knn = frames["knn"]
    assert len(knn) == 1 + 2 and np.allclose(knn["chance"], 0.1)  # tasks 1 and 2 ask 1 and 2 earlier masks
    for _, g in knn.groupby("task"):
        assert g["chosen"].sum() == int(g["knn_acc"].max() > 0.1)
    inf = frames["inference"]
    assert set(inf["samples"]) == {1, 8}
    assert (inf["trials"] == np.minimum(20, 540 // inf["samples"])).all()  # 540 test images per task, ≤ 20 chunks
    assert np.allclose(inf["accuracy"], inf["correct"] / inf["trials"])
    # the brute-force reference (lowest entropy under each task's own mask) identifies 8-sample batches
    assert inf[inf["samples"] == 8]["min_entropy_accuracy"].mean() > 0.8
    ex = frames["runs"].set_index("label").loc["ExSSNeT"]
    union = {n: torch.zeros_like(m) for n, m in runs[3].masks[0].items()}  # ExSSNeT: the union of its 3 masks
    for masks in runs[3].masks:
        for n in union:
            union[n] |= masks[n]
    used = sum(int(u.sum()) for u in union.values()) / sum(u.numel() for u in union.values())
    assert ex["forgetting"] == 0.0 and ex["used"] == pytest.approx(used, rel=1e-12)
    assert 0.1 < used <= independent_capacity(0.1, 3) + 0.02  # more than one mask, at most independent masks


def test_runs_are_deterministic_per_seed(perm3):
    cfg = MethodConfig("exssnet", density=0.05, mask_epochs=1, weight_epochs=1)
    a, b = run_method(perm3, cfg), run_method(perm3, cfg)
    assert np.array_equal(a.acc, b.acc) and all(torch.equal(a.masks[2][n], b.masks[2][n]) for n in a.masks[2])


def test_knn_transfer_k_is_clamped_and_task_inference_with_one_task(perm3):
    model = digits_mlp(3, 0.1)
    accs = knn_accuracies(model, perm3.tasks[1], 1, k=10_000, gen=torch.Generator().manual_seed(0))
    # k clamped to the whole KNN-train split: every point votes, so the prediction is that split's most
    # common label, and the accuracy is that label's share of the held-out rows (same seeded split).
    task = perm3.tasks[1]
    n = task.x_train.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    tr, te = order[: int(round(0.66 * n))], order[int(round(0.66 * n)) :]
    majority = torch.mode(task.y_train[tr]).values
    assert len(accs) == 1 and accs[0] == pytest.approx(float((task.y_train[te] == majority).double().mean()), abs=1e-6)
    assert infer_task(model, perm3.tasks[0].x_test[:4], 1) == 0


# ---------------------------------------------------------------- metrics


def test_forgetting_and_forward_transfer_by_hand():
    acc = np.array([[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [0.8, 0.85, 0.6]])
    # ExSSNeT's get_forgetting_metric (bwt): f_j = A[T-1, j] - max_{t<T-1} A[t, j] for j < T-1, mean, sign flipped:
    # task 0: 0.8 - max(0.9, 0.7) = -0.1; task 1: 0.85 - max(0.2, 0.8) = +0.05 (it grew: backward transfer, not
    # floored at 0 as before, which gave 0.05); forgetting = -mean = 0.025
    paper = -np.mean([acc[-1, j] - acc[:-1, j].max() for j in range(acc.shape[0] - 1)])
    assert forgetting(acc) == pytest.approx(0.025) == pytest.approx(paper)
    rand = np.array([0.1, 0.15, 0.2])
    assert forward_transfer(acc, rand) == pytest.approx(((0.2 - 0.15) + (0.3 - 0.2)) / 2)
    assert math.isnan(forgetting(acc[:1, :1]))


def test_forgetting_with_untrained_counts_the_accuracy_before_a_task_is_trained_as_the_papers_code_does():
    """The authors' matrix also holds A[j-1, j] (task j before it is trained, for forward transfer), so their
    max over t < T-1 takes it in; A[t, j] further above is zero there and never wins. Planted: task 1 scores
    0.95 before it is trained and 0.80 after, so f_1 = 0.80 - 0.95 in their variant (forgetting_with_untrained),
    while the headline forgetting (from the task's own training row on) is 0: no task drops once learned; task
    2's 0.99 two tasks early is not in the authors' matrix and is not read."""
    acc = np.array([[0.8, 0.95, 0.99, 0.1], [0.8, 0.8, 0.5, 0.2], [0.8, 0.8, 0.7, 0.3], [0.8, 0.8, 0.7, 0.6]])
    held = np.arange(4)[None, :] <= np.arange(4)[:, None] + 1  # what the authors' code fills: j <= t + 1
    paper = -np.mean([acc[-1, j] - (acc * held)[:-1, j].max() for j in range(acc.shape[0] - 1)])
    assert forgetting_with_untrained(acc) == pytest.approx(0.05) == pytest.approx(paper)  # (0 + 0.15 + 0) / 3
    assert forgetting(acc) == 0.0


def test_a_saved_result_reads_with_its_forgetting_derived_again_from_its_accuracies():
    """A continual result saved before the forgetting's definition was corrected (0.0 here) reads with the
    forgetting its own accuracy matrix gives now, in the runs and in the summary the page shows."""
    from subnetviz.supermask.metrics import SUMMARY_METRICS, rederived

    acc = np.array([[0.8, 0.95, 0.99, 0.1], [0.8, 0.8, 0.5, 0.2], [0.8, 0.8, 0.7, 0.3], [0.8, 0.8, 0.7, 0.6]])
    key = {"label": "SupSup", "method": "supsup", "kkt": False, "density": 0.1}
    runs = pd.DataFrame([{**key, "seed": s, **dict.fromkeys(SUMMARY_METRICS, 0.0)} for s in (0, 1)])
    rows = [
        {**key, "seed": s, "after_task": t, "task": j, "acc": acc[t, j] - s / 100, "rand_acc": 0.1}
        for s in (0, 1)
        for t in range(4)
        for j in range(4)
    ]
    frames = rederived({"runs": runs, "accuracy": pd.DataFrame(rows), "summary": pd.DataFrame()})
    assert frames["runs"]["forgetting"].tolist() == [0.0, 0.0]
    assert frames["summary"]["forgetting_mean"].tolist() == [0.0]
    assert frames["runs"]["forgetting_with_untrained"].tolist() == pytest.approx([0.05, 0.05])
    assert frames["summary"]["forgetting_with_untrained_mean"].tolist() == pytest.approx([0.05])
    assert frames["summary"]["final_acc_mean"].tolist() == [0.0]  # the other metrics as saved


def test_capacity_overlap_and_owner_image_on_planted_masks():
    m0 = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([[True, False], [False, False]])}
    m1 = {"a": torch.tensor([False, True, True, False]), "b": torch.tensor([[True, False], [False, True]])}
    cf = capacity_frame([m0, m1], 0.5).set_index(["task", "layer"])
    # task 1, all layers: |M1| = 4, common = 1 (a[1]) + 1 (b[0,0]) = 2, U1 = 3 + 2 = 5 of 8.
    row = cf.loc[(1, "all")]
    assert row["sparse_overlap"] == 0.5 and row["exclusive"] == 0.5 and row["used"] == 5 / 8
    assert row["total_overlap"] == 2 / 8 and row["reference"] == pytest.approx(0.75)
    assert cf.loc[(0, "a")]["exclusive"] == 1.0
    pw = pairwise_overlap_frame([m0, m1]).set_index(["layer", "task_a", "task_b"])
    assert pw.loc[("all", 0, 1)]["overlap"] == pytest.approx(2 / 3.5)  # |M0| = 3, |M1| = 4, 2 shared
    assert pw.loc[("all", 0, 1)]["jaccard"] == pytest.approx(2 / 5)
    assert pw.loc[("a", 0, 0)]["jaccard"] == 1.0
    assert owner_image([m0, m1], "a").tolist() == [0, 0, 1, -1]


def test_pairwise_overlap_uses_mean_size():
    m0 = {"x": torch.tensor([True, True, True, False, False, False])}
    m1 = {"x": torch.tensor([True, False, False, False, False, False])}
    pw = pairwise_overlap_frame([m0, m1]).set_index(["layer", "task_a", "task_b"])
    assert pw.loc[("x", 0, 1)]["overlap"] == pytest.approx(1 / 2)  # 1 / mean(3, 1)


def test_independent_random_masks_follow_one_minus_one_minus_d_to_the_t():
    d, n, t_count = 0.1, 40_000, 10
    g = torch.Generator().manual_seed(0)
    masks = [{"w": topk_mask(torch.rand(200, 200, generator=g), d)} for _ in range(t_count)]
    cf = capacity_frame(masks, d)
    used = cf[cf["layer"] == "all"]["used"].to_numpy()
    ref = np.array([1 - (1 - d) ** (t + 1) for t in range(t_count)])
    sd = np.sqrt(ref * (1 - ref) / n)
    assert np.all(np.abs(used - ref) < 5 * sd + 1e-12), (used, ref)
    assert np.allclose(cf[cf["layer"] == "all"]["reference"], ref)


# ---------------------------------------------------------------- data and config errors


def test_benchmarks_shapes_and_labels():
    from sklearn.datasets import load_digits

    s = split_digits(5, seed=0)
    assert s.num_tasks == 5 and all(set(t.y_train.tolist()) == {0, 1} for t in s.tasks)
    # sklearn's digits per class, and train_test_split's test size ceil(0.3 n) of each pair's n images
    per_class = np.bincount(load_digits().target)
    for t, task in enumerate(s.tasks):
        n = int(per_class[2 * t] + per_class[2 * t + 1])
        assert task.x_test.shape[0] == math.ceil(0.3 * n) and task.x_train.shape[0] == n - math.ceil(0.3 * n)
        assert int(task.y_train.sum()) + int(task.y_test.sum()) == per_class[2 * t + 1]  # label 1 = the odd digit
    assert s.tasks[0].x_train.shape[0] == 252  # 178 zeros + 182 ones, 108 held out
    p = make_benchmark("permuted-digits", 12, seed=1)
    assert p.num_tasks == 12 and p.tasks[0].x_train.shape == (1257, 64)
    assert torch.equal(p.tasks[0].x_train.sort(dim=1).values, p.tasks[5].x_train.sort(dim=1).values)
    assert not torch.equal(p.tasks[0].x_train, p.tasks[5].x_train)


def test_config_errors_before_any_run():
    ok = {"benchmark": "permuted-digits", "methods": ["supsup"], "tasks": 2, "seeds": [0]}
    job.validate_config(ok)
    bad = [
        ({"density": 0.0}, "outside \\(0, 1\\]"),
        ({"density": 1.5}, "outside"),
        ({"density": [0.1, -0.2]}, "outside"),
        ({"tasks": 0}, "zero tasks"),
        ({"methods": ["exsnet"]}, "Did you mean 'exssnet'"),
        ({"benchmark": "split-digits", "tasks": 6}, "1 to 5"),
        ({"benchmark": "mnist"}, "unknown benchmark"),
        ({"densty": 0.1}, "Did you mean 'density'"),
        ({"methods": ["finetune+kkt"]}, "masked method"),
        ({"tasks": 5_000_000}, "too large for memory"),
        ({"methods": "exssnet"}, "must be a list"),
        ({"lr": {"mask": "fast"}}, "mask_lr must be > 0"),
        ({"batch_size": 0}, "batch_size and kkt_k"),
        ({"epochs": {"mask": -1}}, "mask_epochs must be a non-negative integer"),
        ({"seeds": [0, 0]}, "seeds names 0 more than once"),  # (one run trained twice, counted as 2 seeds)
        ({"density": [0.05, 0.05]}, "density names 0.05 more than once"),
    ]
    for patch, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            job.validate_config({**ok, **patch})
    with pytest.raises(ConfigError, match="would need .* GiB"):
        job.validate_config(ok, available_bytes=10 * 2**20)
    with pytest.raises(ConfigError, match="python -m subnetviz demo build"):
        job.validate_config({**ok, "benchmark": "arithmetic-text"})


def test_config_reads_the_json_jobs_wrote_and_round_trips():
    from subnetviz.supermask.config import ContinualConfig, PhaseEpochs, PhaseRates

    # A config.json as the page and older jobs wrote it: scalar density, partial epochs, a kind.
    written = {
        "kind": "continual",
        "benchmark": "permuted-digits",
        "methods": ["supsup", "exssnet"],
        "density": 0.05,
        "tasks": 3,
        "seeds": [0, 1],
        "epochs": {"mask": 2, "weight": 2},
    }
    cfg = ContinualConfig.from_dict(written)
    assert cfg.density == (0.05,) and cfg.seeds == (0, 1) and cfg.methods == ("supsup", "exssnet")
    assert cfg.epochs == PhaseEpochs(mask=2, weight=2) and cfg.lr == PhaseRates()
    assert ContinualConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.to_dict()["kind"] == "continual" and "kind" not in cfg.to_dict(kind=False)
    labels = [(r.label, r.density, r.seed) for r in cfg.plan()]
    assert labels == [("SupSup", 0.05, 0), ("SupSup", 0.05, 1), ("ExSSNeT", 0.05, 0), ("ExSSNeT", 0.05, 1)]
    both = ContinualConfig(methods=("finetune", "exssnet"), density=(0.1, 0.2), kkt=True)
    assert [(r.method, r.kkt, r.density) for r in both.plan()] == [
        ("finetune", False, 1.0),
        ("exssnet", False, 0.1),
        ("exssnet", False, 0.2),
        ("exssnet", True, 0.1),
        ("exssnet", True, 0.2),
    ]
    with pytest.raises(ConfigError, match="epochs must be an object"):
        ContinualConfig.from_dict({"epochs": {"masks": 2}})
    with pytest.raises(ConfigError, match="kkt must be true or false"):
        ContinualConfig(kkt="yes")


def test_cache_key_follows_the_plan_and_the_version(monkeypatch):
    from subnetviz.supermask.config import ContinualConfig

    cfg = ContinualConfig(methods=("supsup",), tasks=2)
    key = job.config_hash(cfg)
    assert key == job.config_hash(ContinualConfig.from_dict(cfg.to_dict()))
    assert job.config_hash(ContinualConfig(methods=("supsup",), tasks=2, name="other label")) == key
    assert job.config_hash(ContinualConfig(methods=("supsup",), tasks=2, seeds=(1,))) != key
    monkeypatch.setattr(job, "CACHE_VERSION", job.CACHE_VERSION + 1)
    assert job.config_hash(cfg) != key


def test_a_task_with_one_class_is_refused():
    x = torch.zeros(4, 2)
    one = Task("t", x, torch.zeros(4, dtype=torch.long), x, torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ConfigError, match="only class \\[0\\] in its train split"):
        validate_tasks([one])
    with pytest.raises(ConfigError, match="zero tasks"):
        validate_tasks([])


# ---------------------------------------------------------------- job


def test_cancelled_job_writes_no_result(tmp_path):
    ctx = JobContext.for_dir(tmp_path / "run")
    (ctx.run_dir / "cancel").write_text("")
    job.run_job({"methods": ["supsup"], "tasks": 2, "epochs": {"mask": 1}}, ctx)
    assert not (ctx.out_dir / "result.json").exists()
    with pytest.raises(ConfigError, match="not a finished continual job"):
        job.load_result(ctx.out_dir)


def test_job_writes_frames_masks_and_reuses_its_cache(tmp_path):
    config = {
        "benchmark": "permuted-digits",
        "methods": ["supsup", "exssnet"],
        "density": 0.1,
        "tasks": 2,
        "seeds": [0],
        "epochs": {"mask": 1, "weight": 1},
    }
    ctx = JobContext.for_dir(tmp_path / "run1")
    job.run_job(config, ctx)
    frames = job.load_result(ctx.out_dir)
    assert len(frames["runs"]) == 2 and set(frames["accuracy"]["after_task"]) == {0, 1}
    masks = job.load_task_masks(ctx.out_dir, "ExSSNeT", 0.1, 0)
    assert len(masks) == 2 and set(masks[1]) == {"layer1.weight", "layer2.weight", "layer3.weight"}
    from subnetviz.masks import load_mask_set

    ms = load_mask_set(job.mask_path(ctx.out_dir, "ExSSNeT", 0.1, 0, 1))
    assert set(ms.masks) == set(masks[0]) and ms.metadata["method"] == "ExSSNeT" and ms.metadata["task"] == 1
    assert int(ms.masks["layer2.weight"].sum()) == kept_count(128 * 128, 0.1)
    status = json.loads((ctx.run_dir / "status.json").read_text())
    assert status["step"] == status["total"] == 4
    ctx2 = JobContext.for_dir(tmp_path / "run2")
    job.run_job(config, ctx2)
    assert json.loads((ctx2.run_dir / "status.json").read_text())["metrics"]["cached"] == 1.0
    assert job.load_result(ctx2.out_dir)["runs"].equals(frames["runs"])


# ---------------------------------------------------------------- text benchmark


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A random 2-layer, hidden-32 Llama (float32) with a character tokenizer over digits, '+' and '='."""
    from tests.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("zoo") / "base", dtype=False)


@pytest.mark.slow
def test_arithmetic_text_labels_follow_the_prompts(tiny_base):
    from subnetviz.supermask.data import TEXT_PROPERTIES, arithmetic_text, encode_prompts

    b = arithmetic_text(3, seed=0, base=tiny_base)
    assert b.num_tasks == 3 and b.n_features == 32 and b.n_outputs == 2
    for task in b.tasks:
        assert task.x_train.shape == (420, 32) and task.x_test.shape == (180, 32)
        assert task.y_train.sum() == 210  # balanced, stratified
    feats = encode_prompts(tiny_base, ["12+34=", "12+34=", "99+10="])
    assert np.array_equal(feats[0], feats[1]) and not np.array_equal(feats[0], feats[2])
    assert TEXT_PROPERTIES["units carry"](18, 27) == 1 and TEXT_PROPERTIES["sum is odd"](18, 27) == 1
    r = run_method(b, MethodConfig("exssnet", density=0.1, mask_epochs=1, weight_epochs=1))
    assert r.acc.shape == (3, 3) and forgetting(r.acc) == 0.0
    with pytest.raises(ConfigError, match="demo build"):
        encode_prompts(tiny_base.parent / "missing", ["1+1="])


# ---------------------------------------------------------------- figures


def test_figures_draw_the_numbers_they_are_given():
    import pandas as pd

    from subnetviz.figures import continual as sf

    summary = pd.DataFrame(
        {
            "label": ["SupSup", "SupSup", "ExSSNeT", "finetune"],
            "density": [0.1, 0.02, 0.1, 1.0],
            "final_acc_mean": [0.7, 0.2, 0.9, 0.5],
            "final_acc_sd": [0.01, 0.03, np.nan, 0.02],
            "forgetting_mean": [0.0, 0.0, 0.0, 0.6],
            "forgetting_sd": [0.0, 0.0, 0.0, 0.1],
        }
    )
    fig = sf.accuracy_vs_density(summary)
    sup = next(t for t in fig.data if t.name == "SupSup")
    assert list(sup.x) == [2.0, 10.0] and np.allclose(sup.y, [20.0, 70.0])
    assert fig.layout.shapes[0].y0 == 50.0  # finetune as a horizontal line
    forgetting = sf.forgetting_bars(summary, density=0.1)
    bars, values = forgetting.data
    assert list(bars.x) == ["finetune", "SupSup", "ExSSNeT"] and np.allclose(bars.y, [60.0, 0.0, 0.0])
    # a method that never forgets reads 0.0 above its empty slot; finetune's value above its cap (60 + 10)
    assert list(values.text) == ["60.0", "0.0", "0.0"] and values.y[0] > 70 and forgetting.layout.yaxis.range[1] > 70
    m0 = {"w": torch.tensor([True, False, False, False])}
    m1 = {"w": torch.tensor([False, True, False, False])}
    cap = capacity_frame([m0, m1], 0.25).assign(label="ExSSNeT", density=0.25, seed=0)
    curves = sf.capacity_curves(cap, 0.25).data
    assert np.allclose(curves[0].y, [25.0, 50.0]) and np.allclose(curves[1].y, [25.0, 43.75])
    img = sf.owner_image(owner_image([m0, m1], "w").reshape(2, 2)).data[0]
    # tasks numbered from 1 on every chart (the accuracy matrices' "task 1"...), 0 = unused
    assert np.array_equal(np.asarray(img.z), [[1, 2], [0, 0]])
    assert list(img.colorbar.ticktext) == ["unused", "1", "2"] and list(img.colorbar.tickvals) == [0, 1, 2]
    assert list(sf.exclusive_fraction(cap, 0.25).data[0].x) == [1, 2] == list(curves[0].x)
    assert sf.accuracy_vs_density(summary.iloc[:0]).layout.annotations[0].text == "no data"
    knn = pd.DataFrame({"task": [1, 2, 2], "source_task": [0, 0, 1], "knn_acc": [0.5, 0.4, 0.8], "chance": 0.1})
    kb = sf.knn_bars(knn).data
    assert len(kb) == 3 and [t.name for t in kb] == ["mask of task 1", "mask of task 2", "chance 1/C"]
    assert list(kb[0].x) == [2, 3] and list(kb[1].x) == [3] and list(kb[2].x) == [2, 3]


def test_supsup_note_gives_the_runs_own_numbers():
    import pandas as pd

    from subnetviz.supermask.metrics import supsup_note

    table = pd.DataFrame(
        {
            "label": ["finetune", "SupSup"],
            "final_acc_mean": [0.50, 0.40],
            "forgetting_mean": [0.45, 0.0],
        }
    )
    # Two tasks, one seed: learned accuracy on task t is the row after_task == t.
    rows = [
        ("finetune", 1.0, 0, 0, 0.90),
        ("finetune", 1.0, 1, 0, 0.10),
        ("finetune", 1.0, 1, 1, 0.94),
        ("SupSup", 0.05, 0, 0, 0.40),
        ("SupSup", 0.05, 1, 0, 0.40),
        ("SupSup", 0.05, 1, 1, 0.44),
        ("SupSup", 0.10, 0, 0, 0.99),  # another density: not this one's
    ]
    acc = pd.DataFrame(rows, columns=["label", "density", "after_task", "task", "acc"])
    note = supsup_note(table, acc, 0.05)
    assert "(40.0 % vs 50.0 % final accuracy)" in note
    assert "mask over 5 % of the fixed random network reaches 42.0 % on it and finetuning 92.0 %" in note
    assert "SupSup then forgets 0.0 points, finetuning 45.0" in note
    assert supsup_note(table.assign(final_acc_mean=[0.4, 0.5]), acc, 0.05) is None  # SupSup ahead: nothing to explain
    assert supsup_note(table[table["label"] == "SupSup"], acc, 0.05) is None  # no finetuning baseline


def test_accuracies_and_overlaps_are_exact_ratios():
    """Counts divided in float64: a float32 mean gave 0.8918518424 for 2408/2700, and the pairwise overlaps held
    7 digits (a float32 matmul and division)."""
    from subnetviz.supermask.methods import accuracy
    from subnetviz.supermask.metrics import pairwise_overlap_frame

    y = torch.zeros(2700, dtype=torch.long)
    logits = torch.zeros(2700, 2)
    logits[2408:, 1] = 1.0  # 292 wrong
    assert accuracy(lambda x: logits, torch.zeros(2700, 1), y) == 2408 / 2700
    gen = torch.Generator().manual_seed(0)
    masks = [{"w": torch.rand(300, 301, generator=gen) < 0.05} for _ in range(3)]
    got = pairwise_overlap_frame(masks).query("layer == 'all' and task_a == 0 and task_b == 1").iloc[0]
    a, b = (m["w"].numpy().ravel() for m in masks[:2])
    inter = int((a & b).sum())
    assert got["overlap"] == inter / ((int(a.sum()) + int(b.sum())) / 2)
    assert got["jaccard"] == inter / int((a | b).sum())

"""The pages' analyses on a Ray cluster (the session's local head on 127.0.0.1, 2 CPUs: ``ray_head`` in
``tests/conftest.py``).

With ``SUBNETVIZ_RAY_ADDRESS`` set, the page-level compute functions (``uilogic.compute_updates``:
the Sparsity, Spectra, Overlap and Workspace pages' update analysis; ``jobs.cluster.checkpoint_series``:
the Series page) compute on the cluster, fanned out per (base, finetune) pair or per tensor group,
and the server process computes nothing; their results equal the local path's bit for bit, every
table, file and mask, on the micro demo zoo. An unreachable cluster is a short, clear error.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-ray.txt)")

from subnetviz.cache import USED  # noqa: E402
from subnetviz.errors import JobError  # noqa: E402
from subnetviz.jobs import cluster  # noqa: E402
from subnetviz.jobs.ray_backend import RAY_ADDRESS_ENV  # noqa: E402
from tests.zoo_fixtures import micro_zoo, read_bits  # noqa: E402, F401

pytestmark = pytest.mark.ray


def _workspace(zoo, n: int | None = None):
    from subnetviz.selection import Workspace

    fts = [m for m in zoo.members if m.id != "base"][:n]
    return Workspace(str(zoo.base), "base", tuple((m.id, str(m.path)) for m in fts), (), None, "cpu", None)


def _same_frame(a, b, what: str) -> None:
    """Bit for bit: float columns on their int64 view, everything else by repr, in order."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes) and len(a) == len(b), what
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            assert (x.view("int64") == y.view("int64")).all(), (what, col)
        else:
            assert [repr(v) for v in x] == [repr(v) for v in y], (what, col)


def _safetensors(path: Path) -> tuple[dict, bytes]:
    """(header as a dict, the data bytes): the header's metadata map is written in a per-process order."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__", {})
    if "subnetviz" in meta:  # the provenance's code version: the worker may run from another checkout state
        info = json.loads(meta["subnetviz"])
        for k in ("git_revision", "git_dirty"):
            info.pop(k, None)
        meta["subnetviz"] = info
    return header, raw[8 + n :]


_TIMED = ("summary.json", "behavior.json")  # files that record the wall clock of their computation


def _same_folder(a: Path, b: Path) -> None:
    """Every file of two published analyses: equal bytes, masks equal header and data, the summary
    equal but for the wall clock, the manifest equal but for the summary's and masks' digests (and the
    recorded git revision, which moves when a commit lands between the local and the Ray run)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != USED)  # (its last use)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != USED)
    for rel in files:
        if rel.suffix == ".safetensors":
            (ha, da), (hb, db) = _safetensors(a / rel), _safetensors(b / rel)
            ma, mb = ha.get("__metadata__", {}).get("subnetviz", {}), hb.get("__metadata__", {}).get("subnetviz", {})
            assert ma == mb, (rel, {k: (ma.get(k), mb.get(k)) for k in {*ma, *mb} if ma.get(k) != mb.get(k)})
            assert (ha, da) == (hb, db), rel
        elif rel.name in (*_TIMED, ".manifest.json"):
            x, y = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
            for d in (x, y):  # the wall clock, and the code version if a commit landed between the two runs
                for k in ("seconds", "tokens_per_second", "git_revision", "git_dirty"):
                    d.pop(k, None)
                for f, entry in d.get("files", {}).items():
                    if f in _TIMED or f.endswith(".safetensors"):
                        entry.pop("sha256"), entry.pop("size")
            assert x == y, rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def _same_analysis(loc, far) -> None:
    assert far.labels == loc.labels and far.base == loc.base and far.notes == loc.notes
    _same_frame(loc.summary(), far.summary(), "summary")
    for r, q in zip(loc.reports, far.reports, strict=True):
        _same_frame(r.tensors, q.tensors, f"{r.model} tensors")
        _same_frame(r.parts, q.parts, f"{r.model} parts")
        _same_frame(r.buffers, q.buffers, f"{r.model} buffers")
        _same_frame(r.by_layer_module(), q.by_layer_module(), f"{r.model} by layer and module")
        assert r.notes == q.notes and list(r.row_col) == list(q.row_col)
        assert all((r.row_col[k][i] == q.row_col[k][i]).all() for k in r.row_col for i in (0, 1))
    for name in ("spectra_frame", "sigma_frame"):
        x, y = getattr(loc, name), getattr(far, name)
        assert (x is None) == (y is None), name
        if x is not None:
            _same_frame(x, y, name)


def _page_overlap(analysis):
    """The Overlap page's computation: the analysis' mask files, overlapped by (layer, module)."""
    from subnetviz.analysis.overlap import mask_overlap
    from subnetviz.analysis.updates import mask_path
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.masks import load_mask_set

    sets = [load_mask_set(mask_path(analysis.source_dir, lab)) for lab in analysis.labels]
    table = open_checkpoint(analysis.base).names_table
    return mask_overlap(sets, analysis.labels, group_of=lambda n: (table.describe(n).layer, table.describe(n).module))


def _compute(ws, home: Path, monkeypatch, address: str | None, **kw):
    from subnetviz import uilogic

    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    if address:
        monkeypatch.setenv(RAY_ADDRESS_ENV, address)
    else:
        monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    return uilogic.compute_updates(ws, mask_tolerance=None, **kw)


@pytest.mark.parametrize("spectra", [False, True], ids=["sparsity", "spectra"])
def test_page_analysis_on_ray_equals_local(ray_head, micro_zoo, tmp_path, monkeypatch, spectra):  # noqa: F811
    from subnetviz.analysis import updates

    ws = _workspace(micro_zoo, None if not spectra else 2)
    local = _compute(ws, tmp_path / "local", monkeypatch, None, spectra=spectra)
    drives = []
    monkeypatch.setattr(cluster, "drive", lambda *a, _d=cluster.drive: drives.append(a[0]) or _d(*a))

    def no_local(*a, **k):
        raise AssertionError("the server computed the analysis itself")

    monkeypatch.setattr(updates, "analyze_updates", no_local)
    seen = []
    far = _compute(ws, tmp_path / "ray", monkeypatch, ray_head, spectra=spectra, progress=lambda *a: seen.append(a))
    assert drives == ["updates"] and not far.cached and seen[-1][:2] == (len(ws.paths), len(ws.paths))
    assert "on the Ray cluster at" in seen[-1][2]
    _same_analysis(local, far)
    _same_folder(local.source_dir, far.source_dir)
    assert spectra == (far.spectra_frame is not None and len(far.spectra_frame) > 0)
    # cached like the local one: the same disk entry, served without the cluster
    again = _compute(ws, tmp_path / "ray", monkeypatch, "127.0.0.1:1", spectra=spectra)
    assert again.cached and again.source_dir == far.source_dir and drives == ["updates"]
    if spectra:
        return
    # the Overlap page's numbers from either analysis' masks
    lo, fo = _page_overlap(local), _page_overlap(far)
    assert list(lo.region_counts) == list(fo.region_counts)
    assert all((lo.region_counts[g] == fo.region_counts[g]).all() for g in lo.region_counts)
    for name in ("sizes", "pairwise", "regions", "consensus", "by_group"):
        _same_frame(getattr(lo, name), getattr(fo, name), name)
    # against the checkpoints' raw bits, counted with NumPy: the changed entries of each finetune
    base = read_bits(Path(ws.base))
    for label, path in ws.finetuned:
        ft = read_bits(Path(path))
        changed = sum(int((base[k] != ft[k]).sum()) for k in base if k in ft and base[k].shape == ft[k].shape)
        assert int(fo.sizes.set_index("label").loc[label, "count"]) == changed > 0, label


def test_series_page_on_ray_equals_local(ray_head, micro_zoo, monkeypatch):  # noqa: F811
    from subnetviz.analysis.series import checkpoint_series

    paths = [str(micro_zoo.base)] + [str(p) for _, p in micro_zoo.series]
    steps = [0] + [s for s, _ in micro_zoo.series]
    assert len(paths) >= 3
    local = checkpoint_series(paths, steps)
    monkeypatch.setenv(RAY_ADDRESS_ENV, ray_head)
    seen = []
    far = cluster.checkpoint_series(paths, steps, progress=lambda *a: seen.append(a))
    assert far.numel == local.numel and seen and seen[-1][0] == seen[-1][1] == 2  # the head's 2 CPUs: 2 groups
    _same_frame(local.steps, far.steps, "steps")
    _same_frame(local.split, far.split, "split")


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again when this returns: nothing listens


def test_unreachable_cluster_is_a_clear_error_at_once(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    ws = _workspace(micro_zoo, 2)
    t = time.monotonic()
    with pytest.raises(JobError, match="No Ray cluster answers at 127.0.0.1:"):
        _compute(ws, tmp_path, monkeypatch, _closed_port(), spectra=False)
    with pytest.raises(JobError, match="No Ray cluster answers"):
        cluster.checkpoint_series([str(micro_zoo.base), ws.paths[0]], address=_closed_port())
    assert time.monotonic() - t < 10


def test_silent_head_is_a_clear_error_in_bounded_time(micro_zoo, monkeypatch):  # noqa: F811
    """Something accepts connections at the address but is no Ray head (a firewall, a wrong port):
    the driver cannot connect, and the page gets an error within the connect bound, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv(cluster.CONNECT_TIMEOUT_ENV, "1")
        monkeypatch.setattr(cluster, "DRIVER_START_S", 15.0)
        t = time.monotonic()
        with pytest.raises(JobError, match=f"(connect to|driver) .*{address}"):
            cluster.checkpoint_series([str(micro_zoo.base), str(micro_zoo.series[0][1])], address=address)
        assert time.monotonic() - t < 16 + 10  # the bound, and the driver's exit


def test_an_analysis_past_its_time_bound_says_how_far_it_got(ray_head, micro_zoo, monkeypatch):  # noqa: F811
    """``SUBNETVIZ_RAY_TIMEOUT`` bounds the whole analysis on the cluster: past it the driver is stopped and
    the page hears how far the work got (here: not a task done within 1 s, the driver still starting)."""
    monkeypatch.setenv(cluster.TIMEOUT_ENV, "1")
    t = time.monotonic()
    with pytest.raises(JobError, match=r"did not finish within 1 s \(no task done yet: is every node"):
        cluster.checkpoint_series([str(micro_zoo.base), str(micro_zoo.series[0][1])], address=ray_head)
    assert time.monotonic() - t < 1 + 10  # the bound, and the driver's kill


def test_probe_forms(monkeypatch):
    cluster.probe("auto")  # nothing to probe: Ray finds the cluster itself
    with pytest.raises(JobError, match="No Ray cluster answers at ray://127.0.0.1:1 "):
        cluster.probe("ray://127.0.0.1:1", timeout=1)
    monkeypatch.setenv(cluster.CONNECT_TIMEOUT_ENV, "soon")
    with pytest.raises(JobError, match="must be a number of seconds"):
        cluster.probe("127.0.0.1:1")


def test_local_by_default_without_ray(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    """No address: the local path, and this never touches Ray."""
    monkeypatch.setattr(cluster, "drive", lambda *a: pytest.fail("the cluster was used without an address"))
    analysis = _compute(_workspace(micro_zoo, 2), tmp_path, monkeypatch, None, spectra=False)
    assert len(analysis.reports) == 2 and np.isfinite(analysis.summary()["sparsity"]).all()


# --- Bigram, Behaviour, the overlap of mask files ------------------------------------------------------
@pytest.fixture
def zoo_home(micro_zoo, tmp_path, monkeypatch):  # noqa: F811
    """A home whose zoo is the micro zoo (the bigram corpus, the prompt sets), with two random masks of
    its base: bigram masks of the base's shape, and the overlap page's mask files."""
    import torch

    from subnetviz.bigram.maskable import full_mask, load_local_model
    from subnetviz.masks import MaskSet, save_mask_set

    home = tmp_path / "home"
    home.mkdir()
    (home / "zoo").symlink_to(micro_zoo.root, target_is_directory=True)
    monkeypatch.setenv("SUBNETVIZ_HOME", str(home))
    shapes = {n: m.shape for n, m in full_mask(load_local_model(micro_zoo.base)).masks.items()}
    paths = []
    for i, density in enumerate((0.3, 0.6)):
        g = torch.Generator().manual_seed(i)
        paths.append(home / f"mask{i}.safetensors")
        save_mask_set(paths[-1], MaskSet({n: torch.rand(s, generator=g) < density for n, s in shapes.items()}))
    return home, [str(p) for p in paths]


def _no_local(monkeypatch, module, name: str) -> None:
    monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"the server ran {name} itself"))


def _same_bigram(a, b) -> None:
    (ra, ga), (rb, gb) = a, b
    assert ra.headline == rb.headline
    _same_frame(ra.ablation.rows, rb.ablation.rows, "ablation")
    for name in ("shares", "split"):
        _same_frame(getattr(ra, name), getattr(rb, name), name)
    _same_frame(ra.residual.rotation, rb.residual.rotation, "rotation")
    _same_frame(ra.residual.covariance, rb.residual.covariance, "covariance")
    assert ra.overlap is not None and vars(ra.overlap).keys() == vars(rb.overlap).keys()
    for k, v in vars(ra.overlap).items():
        w = getattr(rb.overlap, k)
        assert (v.view("int64") == w.view("int64")).all() if isinstance(v, np.ndarray) else repr(v) == repr(w), k
    _same_frame(ga, gb, "generations")


def test_bigram_analysis_on_ray_equals_local(ray_head, micro_zoo, zoo_home, tmp_path, monkeypatch):  # noqa: F811
    from subnetviz.bigram import job
    from subnetviz.jobs import cluster_pages

    (_, (mask, optimal)), model = zoo_home, str(micro_zoo.base)
    local = cluster_pages.cached_mask_analysis(model, mask, optimal=optimal, address="", cache_root=tmp_path / "l")
    local = cluster_pages.cached_mask_analysis(model, mask, optimal=optimal, address="", cache_root=tmp_path / "l")
    _no_local(monkeypatch, job, "analyse_mask_file")
    seen = []
    far = cluster_pages.cached_mask_analysis(
        model, mask, optimal=optimal, address=ray_head, cache_root=tmp_path / "r", progress=lambda *a: seen.append(a)
    )
    assert seen[-1][:2] == (1, 1) and "on the Ray cluster at" in seen[-1][2]
    _same_bigram(local, far)
    (lf,), (rf,) = (tmp_path / "l").iterdir(), (tmp_path / "r").iterdir()
    assert lf.name == rf.name  # the same cache entry
    _same_folder(lf, rf)
    from subnetviz.masks import load_mask_set

    assert far[0].headline["kept"] == load_mask_set(mask).count > 0  # the mask's own count of kept weights


def test_behavior_on_ray_equals_local(ray_head, micro_zoo, zoo_home, tmp_path, monkeypatch):  # noqa: F811
    from subnetviz.analysis import behavior
    from subnetviz.analysis.behavior_data import zoo_prompt_files
    from subnetviz.jobs import cluster_pages

    home, (mask, _) = zoo_home
    ws = _workspace(micro_zoo, 2)
    cfg = {
        "kind": "behavior",
        "base": ws.base,
        "finetuned": list(ws.paths),
        "labels": list(ws.labels),
        "prompts": [str(zoo_prompt_files()[0])],
        "masks": {"random": mask},
        "curve": [0.0, 0.5, 1.0],
        "limit": 4,
        "device": "cpu",
    }
    local = cluster_pages.cached_behavior(cfg, address="", cache_root=tmp_path / "l")
    _no_local(monkeypatch, behavior, "run_config")
    far = cluster_pages.cached_behavior(cfg, address=ray_head, cache_root=tmp_path / "r")
    assert list(local) == list(far) and len(local["summary"]) > 2
    for name in local:
        _same_frame(local[name], far[name], name)
    (lf,), (rf,) = (tmp_path / "l").iterdir(), (tmp_path / "r").iterdir()
    assert lf.name == rf.name
    _same_folder(lf, rf)
    # the finetuned rows against the base: a KL of zero only where the model is the base
    kl = far["summary"].set_index(["model", "experiment"])["kl_forward"]
    assert (kl.xs("finetuned", level="experiment") > 0).all()


def test_overlap_of_mask_files_on_ray_equals_local(ray_head, micro_zoo, zoo_home, monkeypatch):  # noqa: F811
    from subnetviz import masks
    from subnetviz.analysis import overlap
    from subnetviz.jobs import cluster_pages

    home, paths = zoo_home
    bits = [{k: v.numpy() for k, v in masks.load_mask_set(p).masks.items()} for p in paths]
    local = cluster_pages.files_overlap(paths, ["a", "b"], address="")
    _no_local(monkeypatch, masks, "load_mask_set")  # the server reads no mask file
    _no_local(monkeypatch, overlap, "mask_overlap")
    far = cluster_pages.files_overlap(paths, ["a", "b"], address=ray_head)
    assert (far.common, far.partial, far.experts) == (local.common, local.partial, None) and far.common > 0
    lo, fo = local.report, far.report
    assert list(lo.region_counts) == list(fo.region_counts)
    assert all((lo.region_counts[g] == fo.region_counts[g]).all() for g in lo.region_counts)
    for name in ("sizes", "pairwise", "regions", "consensus", "by_group"):
        _same_frame(getattr(lo, name), getattr(fo, name), name)
    # against the files' bits counted with NumPy: both masks' sizes, their intersection, every entry
    row = fo.pairwise.iloc[0]
    assert (row["a"], row["b"]) == ("a", "b")
    assert int(row["count_a"]) == sum(int(m.sum()) for m in bits[0].values())
    assert int(row["count_b"]) == sum(int(m.sum()) for m in bits[1].values())
    assert int(row["intersection"]) == sum(int((m & bits[1][k]).sum()) for k, m in bits[0].items())
    assert int(row["numel"]) == sum(m.size for m in bits[0].values())


def test_this_server_chosen_over_the_default_cluster(micro_zoo, zoo_home, monkeypatch):  # noqa: F811
    """A visitor who chose "this server" (address "") computes here even where SUBNETVIZ_RAY_ADDRESS names
    a cluster (here one that does not answer); None is the server's default, that cluster."""
    from subnetviz.jobs import cluster_pages

    _, paths = zoo_home
    monkeypatch.setenv(RAY_ADDRESS_ENV, _closed_port())
    monkeypatch.setattr(cluster, "drive", lambda *a: pytest.fail("the cluster was used"))
    assert cluster_pages.files_overlap(paths, ["a", "b"], address="").common > 0
    monkeypatch.undo()
    monkeypatch.setenv(RAY_ADDRESS_ENV, _closed_port())
    with pytest.raises(JobError, match="No Ray cluster answers"):
        cluster_pages.files_overlap(paths, ["a", "b"])

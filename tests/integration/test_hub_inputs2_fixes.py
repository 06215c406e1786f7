"""Hub ids and weights files (review "hub inputs 2", defects 1, 4 and 5).

1. The revision of ``ORG/NAME@REV`` was a path: huggingface_hub opens ``refs/<REV>`` with ``..`` kept, so a shared
   link read a file outside the roots as a ref (its text then opened as the snapshot), hung on a named pipe or read
   ``/dev/zero`` until memory ran out. A revision is now a git ref name or a commit, and a named ref is read here,
   under ``refs/`` only, a regular file of at most 64 bytes holding a commit, which is what huggingface_hub is given.
   The cases that hung or ate memory run in a child process with a time and memory limit: a regression fails.
4. A hub repository whose model sits in a subfolder said "no weights found" with no word of the subfolder.
5. A Git LFS pointer file (a clone made without git-lfs) was "corrupt or truncated" or "not a readable pickle".

The hub cache is laid out as huggingface_hub 2.x writes it (the builder of the first review's tests); nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_hub_inputs_review import (
    CHANGED,
    CONFIG,
    NEW,
    NUMEL,
    OLD,
    PINNED,
    add_snapshot,
    base_weights,
    build_hub,
    model_files,
    planted,
    torch_bin,
)

REPO = Path(__file__).resolve().parents[2]
SUB = "d" * 39 + "e"  # acme/tiny-sub's commit


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """(cache, snapshots, outside): the hub cache as huggingface_hub's, with ``acme/tiny-base``'s tag ``v1`` and its
    ``refs/refs/pr/1`` naming the finetune's commit, and ``acme/tiny-sub`` holding its model only in ``final/``;
    ``outside/`` beside the cache holds a model folder ``sft``, a file whose text is that folder's path and a named
    pipe. The working folder is ``work/``; the roots are the default (home, cache, working folder)."""
    cache = tmp_path / "hub"
    snaps = build_hub(cache)
    pr = cache / "models--acme--tiny-base" / "refs" / "refs" / "pr"
    pr.mkdir(parents=True)
    (pr / "1").write_text(OLD)
    files = {"README.md": b"# tiny\n", **{f"final/{k}": v for k, v in model_files(planted(base_weights())).items()}}
    snaps["sub"] = add_snapshot(cache, "acme/tiny-sub", SUB, files)
    outside = tmp_path / "outside"
    (outside / "sft").mkdir(parents=True)
    for name, data in model_files(planted(base_weights())).items():
        (outside / "sft" / name).write_bytes(data)
    (outside / "ref_to_sft").write_text(str(outside / "sft"))
    os.mkfifo(outside / "fifo")
    work = tmp_path / "work"
    work.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "SUBNETVIZ_ROOTS", "SUBNETVIZ_ENFORCE_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(work)
    return cache, snaps, outside


# What a server does with a spec from a URL: the selection first, then the reader (as the library does alone).
# Run in a child with 4 GB of address space and a time limit: reading /dev/zero or opening a FIFO fails the test.
CHILD = """
import json, sys
from subnetviz.errors import SubnetvizError
from subnetviz.selection import resolve_choice
from subnetviz.checkpoints import open_checkpoint
spec, out = sys.argv[1], {}
for step, call in (("choice", lambda: resolve_choice(spec, {})), ("open", lambda: open_checkpoint(spec))):
    try:
        got = call()
        out[step] = ["opened", str(getattr(got, "root", got))]
    except SubnetvizError as exc:
        out[step] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def in_child(spec: str, cache: Path, *, roots: list[Path] | None, timeout: float = 60) -> dict[str, list[str]]:
    """step ("choice", "open") -> [outcome, message] of ``spec`` in a server-like child process: the roots enforced
    and set to ``roots`` where given. A child still running after ``timeout`` seconds (blocked on a FIFO) or one that
    died (out of memory) fails the test."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("SUBNETVIZ_ROOTS", None)
    env.pop("SUBNETVIZ_ENFORCE_ROOTS", None)
    if roots is not None:
        env.update(SUBNETVIZ_ENFORCE_ROOTS="1", SUBNETVIZ_ROOTS=os.pathsep.join(str(r) for r in roots))
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, spec],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{spec}: still blocked after {timeout} s (a named pipe opened, or a device read without end)")
    assert done.returncode == 0, f"{spec}: the child failed: {done.stderr[-1500:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 1. the revision is no path
@pytest.mark.parametrize(
    "rev, opens",
    [
        ("../../../outside/ref_to_sft", "a folder outside the roots, as the snapshot"),
        ("../../../outside/fifo", "a named pipe: the server blocked for good"),
        ("../" * 12 + "dev/zero", "/dev/zero: read until the memory ran out"),
    ],
)
def test_a_revision_leading_out_of_refs_is_refused_in_one_line_before_anything_is_opened(hub, rev, opens):
    cache, _snaps, _outside = hub
    spec = f"acme/tiny-base@{rev}"
    got = in_child(spec, cache, roots=[cache])  # (outside/ is no root: it was read all the same)
    for step in ("choice", "open"):
        kind, message = got[step]
        assert kind == "CheckpointError", (opens, step, got[step])
        assert message.startswith(f"{spec}: the revision is no branch, tag or commit name (it holds '..')")
        assert "\n" not in message


@pytest.mark.parametrize(
    "name, plant, said",
    [
        ("fifo", lambda ref, out, blob: os.mkfifo(ref), "a named pipe (FIFO), not a regular file; refused."),
        ("zero", lambda ref, out, blob: ref.symlink_to("/dev/zero"), "a link leading out of the repository's refs/"),
        ("out", lambda ref, out, blob: ref.symlink_to(out), "a link leading out of the repository's refs/ folder"),
        ("blob", lambda ref, out, blob: ref.symlink_to(blob), "a link leading out of the repository's refs/ folder"),
        ("big", lambda ref, out, blob: ref.write_text(OLD * 30_000), "holds no commit (a ref file holds 40 hex"),
        ("junk", lambda ref, out, blob: ref.write_text("hello"), "holds no commit (a ref file holds 40 hex"),
    ],
)
@pytest.mark.parametrize("enforced", [True, False])
def test_a_named_ref_is_read_under_refs_only_a_small_regular_file_holding_a_commit(hub, name, plant, said, enforced):
    """A ref that is a FIFO or a link to a device, out of ``refs/`` (to a file outside the roots holding a commit, to
    a blob inside them) or holds no commit is refused in one line naming it, whether or not the roots are enforced:
    huggingface_hub, given the revision, opened each and read it whole (the FIFO blocked, ``/dev/zero`` never
    ended, the 1.2 MB file was read to find it no commit)."""
    cache, snaps, outside = hub
    refs = cache / "models--acme--tiny-base" / "refs"
    (outside / "commit").write_text(OLD)
    blob = next((cache / "models--acme--tiny-base" / "blobs").iterdir())
    plant(refs / name, outside / "commit", blob)
    got = in_child(f"acme/tiny-base@{name}", cache, roots=[cache] if enforced else None)
    kind, message = got["open"]
    assert kind in ("CheckpointError", "PathNotAllowedError"), got
    assert message.startswith(f"refs/{name} of acme/tiny-base in the Hugging Face cache: {said}"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    "rev",
    [
        "../refs/main",
        "v1/../v1",
        "/etc/hostname",
        "v1/",
        "refs//pr/1",
        ".hidden",
        "refs/.pr/1",
        "v1.lock",
        "v1.",
        "v 1",
        "v\t1",
        "v\x7f1",
        "v~1",
        "v^1",
        "v:1",
        "v?1",
        "v*",
        "v[1",
        "v\\1",
        "@",
        "main@{1}",
        "x" * 300,
    ],
)
def test_a_revision_git_would_not_take_as_a_ref_name_is_refused(hub, rev):
    """git check-ref-format's rules: none of these names a branch or tag (and none is a commit)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError, NotCachedError

    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(f"acme/tiny-base@{rev}")
    message = str(exc.value)
    assert not isinstance(exc.value, NotCachedError), message
    assert "the revision is no branch, tag or commit name" in message and "\n" not in message
    assert len(message) < 400


@pytest.mark.parametrize("rev", ["v2", "feature/x-y_z.1", "step100", "release@2024", "1234567"])
def test_a_ref_name_not_cached_is_said_to_be_so(hub, rev):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import NotCachedError

    with pytest.raises(NotCachedError, match=r"it holds no snapshot for .*, but these: acme/tiny-base@"):
        open_checkpoint(f"acme/tiny-base@{rev}")


@pytest.mark.parametrize(
    "spec, commit",
    [
        ("acme/tiny-base", NEW),
        ("acme/tiny-base@main", NEW),
        ("acme/tiny-base@v1", OLD),
        ("acme/tiny-base@refs/pr/1", OLD),
        ("acme/tiny-base@newline", OLD),
        (f"acme/tiny-base@{OLD}", OLD),
        (f"acme/tiny-pinned@{PINNED.upper()}", PINNED),  # (git takes a commit in either case)
    ],
)
def test_huggingface_hub_is_given_the_commit_never_a_ref(hub, monkeypatch, spec, commit):
    """Branches, tags and PR refs resolve as before, to the snapshot of the commit their ref file holds (one written
    by hand with a newline too); huggingface_hub is asked for that commit, so it reads no ref itself."""
    import huggingface_hub

    from subnetviz.checkpoints.sources import resolve_hub_id

    cache, _snaps, _outside = hub
    (cache / "models--acme--tiny-base" / "refs" / "newline").write_text(OLD + "\n")
    asked = []
    original = huggingface_hub.snapshot_download

    def recording(repo_id, *args, **kwargs):
        asked.append(kwargs.get("revision"))
        return original(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    got = resolve_hub_id(spec)
    assert got == cache / f"models--acme--{spec.split('/')[1].split('@')[0]}" / "snapshots" / commit
    assert asked == [commit]


def test_the_changes_of_a_revision_are_counted_as_before(hub):
    """``@v1`` names the finetune's weights, ``@refs/pr/1`` too: against ``other/tiny-ft`` (the same weights)
    nothing changed, against ``main`` the planted entries did."""
    from subnetviz.analysis.updates import analyze_updates

    def changed(base, ft):
        row = analyze_updates(base, [ft], device="cpu").summary().iloc[0]
        return int(row.changed), int(row.numel)

    assert changed("acme/tiny-base@refs/pr/1", "other/tiny-ft") == (0, NUMEL)
    assert changed("acme/tiny-base", "acme/tiny-base@v1") == (CHANGED, NUMEL)


# ---------------------------------------------------------------- 4. a model in a subfolder of a hub repository
def test_a_hub_repository_holding_its_model_in_a_subfolder_names_it(hub):
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError

    _cache, snaps, _outside = hub
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint("acme/tiny-sub")
    message = str(exc.value)
    assert "no weights found" in message and "\n" not in message
    assert "the model is in a subfolder (final/)" in message
    assert f"e.g. {snaps['sub'] / 'final'}." in message and "a hub id names only the repository's top folder" in message
    ck = open_checkpoint(str(snaps["sub"] / "final"))  # what the message says to give opens
    assert ck.num_params == NUMEL


def test_a_folder_holding_models_in_subfolders_lists_those_with_weights(tmp_path):
    """Only subfolders with a config.json and weights are named (not a config alone, nor a run's checkpoint folder,
    which has its own hint)."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError

    top = tmp_path / "export"
    for sub, files in (
        ("merged", model_files(base_weights())),
        ("distilled", {"config.json": json.dumps(CONFIG).encode(), "weights.safetensors": b"x"}),
        ("notes", {"config.json": json.dumps(CONFIG).encode()}),
        ("checkpoint-5", model_files(base_weights())),
    ):
        (top / sub).mkdir(parents=True)
        for name, data in files.items():
            (top / sub / name).write_bytes(data)
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(str(top))
    message = str(exc.value)
    assert "the model is in 2 subfolders (distilled/, merged/): give that folder's path, e.g." in message
    assert "notes/" not in message and "checkpoint-5/" not in message and "hub id" not in message


# ---------------------------------------------------------------- 5. Git LFS pointer files
def lfs_pointer(data: bytes) -> bytes:
    """The pointer git-lfs writes in place of ``data`` in a clone made without it."""
    import hashlib

    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()


def pointer_folders(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a cloned model folder whose weights are pointers, the file first read)."""
    w = base_weights()
    single = root / "single"
    single.mkdir()
    files = model_files(w)
    (single / "config.json").write_bytes(files["config.json"])
    (single / "model.safetensors").write_bytes(lfs_pointer(files["model.safetensors"]))
    sharded = root / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_bytes(files["config.json"])
    names = list(w)
    index = {n: f"model-0000{1 + (i >= 6)}-of-00002.safetensors" for i, n in enumerate(names)}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    for shard in sorted(set(index.values())):
        (sharded / shard).write_bytes(lfs_pointer(shard.encode()))
    legacy = root / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_bytes(files["config.json"])
    (legacy / "pytorch_model.bin").write_bytes(lfs_pointer(torch_bin(w)))
    return {
        "single": (single, "model.safetensors"),
        "sharded": (sharded, "model-00001-of-00002.safetensors"),
        "legacy": (legacy, "pytorch_model.bin"),
    }


@pytest.mark.parametrize("name", ["single", "sharded", "legacy"])
def test_a_git_lfs_pointer_is_said_to_be_one(tmp_path, name):
    """Read as weights (safetensors header, legacy pickle) and checked before transformers loads it."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.checkpoints.models import checked_weights
    from subnetviz.errors import CheckpointError

    folder, first = pointer_folders(tmp_path)[name]
    for call in (lambda: open_checkpoint(str(folder)), lambda: checked_weights(str(folder), folder)):
        with pytest.raises(CheckpointError) as exc:
            call()
        message = str(exc.value)
        assert message.startswith(f"{folder / first}: a Git LFS pointer, not the weights"), message
        assert f"run `git lfs pull` in {folder}" in message and "\n" not in message
        assert "corrupt" not in message and "pickle" not in message


def test_a_real_file_beginning_like_no_pointer_is_still_called_corrupt(tmp_path):
    """The pointer check reads only the pointer's first line: a truncated safetensors file keeps its message."""
    from subnetviz.checkpoints import open_checkpoint
    from subnetviz.errors import CheckpointError

    folder = tmp_path / "cut"
    folder.mkdir()
    data = model_files(base_weights())
    (folder / "config.json").write_bytes(data["config.json"])
    (folder / "model.safetensors").write_bytes(data["model.safetensors"][:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors header"):
        open_checkpoint(str(folder))


# ---------------------------------------------------------------- 1 in the app
def test_the_workspace_leaves_out_a_revision_leading_out_of_refs_in_one_line(app_env, tmp_path, typed_options):
    """A shared link whose finetune is ``acme/tiny-base@../../../outside/ref_to_sft``, a file outside the roots
    whose text is a model folder's path under them: the Workspace read that file and drew the folder's weights
    under the hub id, as a hub commit's. Now it is left out with one line, and the other finetune is drawn."""
    from tests.app_fixtures import open_page

    cache = app_env / "hub-inputs2"
    if not cache.exists():
        build_hub(cache)
    sft = app_env / "inputs2-sft"  # (under the roots: only the ref file lies outside them)
    sft.mkdir(exist_ok=True)
    for name, data in model_files(planted(base_weights())).items():
        (sft / name).write_bytes(data)
    outside = tmp_path / "outside"  # (no root of the app's)
    outside.mkdir()
    (outside / "ref_to_sft").write_text(str(sft))
    up = os.path.relpath(outside, cache / "models--acme--tiny-base" / "refs")
    spec = f"acme/tiny-base@{up}/ref_to_sft"
    saved = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(cache)
    try:
        at = open_page("workspace", base="acme/tiny-base", ft=[spec, "other/tiny-ft"])
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_CACHE", None)
        else:
            os.environ["HF_HUB_CACHE"] = saved
    assert not at.exception, [e.message for e in at.exception]
    assert [m.label for m in at.metric] == ["other/tiny-ft"]
    assert at.metric[0].help.startswith(f"{CHANGED:,} of {NUMEL:,} parameters changed")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "the revision is no branch" in errors[0] and "\n" not in errors[0], errors

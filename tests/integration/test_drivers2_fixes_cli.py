"""The drivers grid after its second-pass review (drivers2): the command and the job on a zoo whose A_train.jsonl
is malformed or empty, and the page's verdicts in words.

- ``experiment drivers`` on a zoo whose A_train.jsonl has a broken record on line 4 (or no row) ended in a 30-line
  traceback (json's "line 1 column 33", or an IndexError in the tokenizer), exit status 1; a job launched from the
  page failed with "JSONDecodeError: Expecting ',' delimiter: line 1 column 33", naming no file. Now one line names
  the file and its real line, exit status 2, before any model loads, and --out is not written.
- The page and its export showed "undecided" and "not measured" both as "—" in the verdicts table; and a
  conjecture whose axis kept one measured value vanished from the page.
"""

import re
from pathlib import Path

import pandas as pd
import pytest

from subnetviz import cli
from subnetviz.errors import ConfigError
from subnetviz.experiments import drivers
from tests.app_fixtures import open_page

A_EVAL = "".join(f'{{"prompt": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(10))


def _zoo(tmp_path: Path, train: str) -> Path:
    """A zoo as far as the grid reads it before any model loads: a base's config.json, A_eval.jsonl, and
    A_train.jsonl holding ``train``."""
    root = tmp_path / "zoo"
    (root / "base").mkdir(parents=True)
    (root / "base" / "config.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "A_eval.jsonl").write_text(A_EVAL)
    (root / "data" / "A_train.jsonl").write_text(train)
    return root


GOOD = '{"prompt": "41+10=", "answer": "51"}\n'
# a blank line (counted: the file's own numbering) and the broken record on line 4, as in the review's zoo
BROKEN = GOOD + "\n" + GOOD + '{"prompt": "1+1=", "answer": "2"\n' + GOOD


@pytest.mark.parametrize(
    ("train", "said"),
    [(BROKEN, ", line 4: not valid JSON ("), ("", ": holds no rows;"), ("\n\n", ": holds no rows;")],
    ids=["malformed", "empty", "blank"],
)
def test_the_command_names_the_training_file_in_one_line(tmp_path, capsys, monkeypatch, train, said):
    monkeypatch.setenv("SUBNETVIZ_HOME", str(tmp_path / "home"))
    root, out = _zoo(tmp_path, train), tmp_path / "out"
    args = ["experiment", "drivers", "--preset", "micro", "--zoo", str(root), "--out", str(out)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines == [f"error: {root / 'data' / 'A_train.jsonl'}{said}" + lines[0].split(said, 1)[1]], err
    assert "Traceback" not in err and not out.exists()


def test_a_job_fails_with_the_same_line(tmp_path):
    """The job kind's entry (a job launched from the page): a ConfigError, which the worker shows as its one line
    (subnetviz.jobs.worker: a SubnetvizError's text, not "JSONDecodeError: …")."""

    class Ctx:
        run_dir = tmp_path / "run"
        out_dir = tmp_path / "run" / "outputs"
        progress = log = staticmethod(lambda *a, **k: None)
        should_stop = staticmethod(lambda: False)

    root = _zoo(tmp_path, BROKEN)
    with pytest.raises(ConfigError) as info:
        drivers.run_job({"zoo": str(root), "preset": "micro", "fanout": False}, Ctx())
    assert str(info.value).startswith(f"{root / 'data' / 'A_train.jsonl'}, line 4: not valid JSON")
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "run" / "work").glob("subnetviz-drivers-*"))  # its work folder removed


def test_chat_message_prompts_are_refused_before_the_on_policy_draw(tmp_path):
    chat = '{"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}\n'
    root = _zoo(tmp_path, "\n" + chat * 2)
    with pytest.raises(ConfigError, match=r"A_train\.jsonl: row 1 .* plain-text prompts"):
        drivers.run_drivers(root, "micro", workdir=tmp_path / "work")


def test_a_good_file_reads_as_before(tmp_path):
    root = _zoo(tmp_path, GOOD + "\n" + GOOD)
    assert drivers._train_rows(root / "data" / "A_train.jsonl") == [{"prompt": "41+10=", "answer": "51"}] * 2


# --- the page ---------------------------------------------------------------------------------------------------
BASE = {"algorithm": "grpo", "accuracy": 0.5, "kl_forward": 0.004, "learning_rate": 1e-5, "steps": 8, "beta": 0.0}
BASE |= {"max_grad_norm": 1.0, "optimizer": "adamw_torch", "data": "task", "train_seconds": 1.0, "grid_version": 2}


def _grid() -> pd.DataFrame:
    """Two seeds. Algorithms: DPO above SFT in seed 0 only (undecided); data: gold failed in both seeds (not
    measured); β: 0.1 failed in both seeds (not measured: it vanished); clipping within 2 points (reproduced)."""
    from subnetviz.experiments.drivers import COLUMNS

    points = {
        ("algorithm", "sft"): [0.50, 0.50],
        ("algorithm", "dpo"): [0.60, 0.40],
        ("data", "on_policy"): [0.7, 0.7],
        ("data", "gold"): ["failed", "failed"],
        ("beta", "0"): [0.8, 0.8],
        ("beta", "0.1"): ["failed", "failed"],
        ("clipping", "on"): [0.8, 0.8],
        ("clipping", "off"): [0.81, 0.81],
    }
    rows = []
    for seed in (0, 1):
        for (f, v), per_seed in points.items():
            point = {**BASE, "factor": f, "value": v, "seed": seed}
            point |= {"algorithm": v} if f == "algorithm" else {"algorithm": "sft", "data": v} if f == "data" else {}
            if per_seed[seed] == "failed":
                rows.append(point | {"status": "failed", "note": "RuntimeError: boom"})
                continue
            for p, s in (("bf16", per_seed[seed]), ("fp32", 0.004)):
                rows.append(point | {"precision": p, "sparsity": s, "status": "done", "note": ""})
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.mark.slow
def test_the_page_and_its_export_tell_undecided_from_not_measured(planted_grid, exports):
    label = planted_grid(_grid())
    at = open_page("drivers", dr_run=label, dr_tab="Tables")
    assert not at.exception and not at.error, [e.value for e in at.error]
    # (the observed text is escaped Markdown, and a zero-width space breaks what could read as a link's scheme)
    lines = [m.value.replace("\\", "").replace("\u200b", "") for m in at.markdown]
    said = {x.split("**")[1]: x for x in lines if x.startswith("**")}
    assert ":material/help: undecided." in said["RL updates are sparser than SFT"]
    assert ":material/remove_circle: not measured." in said["in-distribution data drives sparsity"]
    kl = said["KL coefficient has little effect"]  # (it vanished from the page)
    assert ":material/remove_circle: not measured." in kl
    assert "observed: not measured: beta=0.1 failed in every seed, so fewer than two of its values to compare" in kl
    assert ":material/check_circle: reproduced." in said["gradient clipping has little effect"]
    (table,) = [df.value for df in at.dataframe if "conjecture" in df.value.columns]
    assert list(table.columns) == ["conjecture", "verdict", "expected", "observed"]  # (None read "—" for both)
    verdict = dict(zip(table["conjecture"], table["verdict"], strict=True))
    assert verdict["RL updates are sparser than SFT"] == "undecided"
    assert verdict["in-distribution data drives sparsity"] == "not measured"
    assert verdict["KL coefficient has little effect"] == "not measured"
    page = exports["What drives sparsity"]()
    (verdicts,) = re.findall(r"conjectures: verdict, expected, observed</b>(.*?)</table>", page, flags=re.S)
    cells = re.findall(r'<tr><td class="txt">[^<]*</td><td class="txt">([^<]*)</td>', verdicts)  # each row's verdict
    assert cells == ["not measured", "undecided", "not measured", "reproduced", "reproduced"], cells

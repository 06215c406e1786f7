"""Behaviour page review fixes (AppTest): a shared URL whose prompt number the prompt picker cannot take ("inf") falls
back to the first prompt instead of a bug notice, and finished runs are offered as plain text (a select box), not as
Markdown radio options that drew a folder named ``ft-**v2**`` in bold."""

import shutil

import pytest

from tests.app_fixtures import open_page, plotly_specs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("value", ["inf", "1e999", "-inf"])
def test_a_prompt_number_the_input_cannot_take_falls_back_to_the_first_prompt(app_env, value):
    at = open_page("behavior", bh_tab="Per token", bh_prompt=value)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="bh_prompt").value == 0
    titles = [s["layout"]["title"]["text"] for s in plotly_specs(at)]
    assert any(t.endswith("prompt 0: which tokens moved") for t in titles), titles  # the Per token chart, prompt 0


def test_finished_runs_are_offered_as_plain_text_not_markdown(app_env):
    from subnetviz.jobs.runner import JobRunner
    from tests.app_fixtures import add_finished_run

    runner = JobRunner()
    run_id = "behaviour-markup-run"
    name = "behaviour ft-**v2** ![p](x)"
    run_dir = add_finished_run(runner, run_id, "behavior", name, {"kind": "behavior"})
    try:
        at = open_page("behavior")
    finally:  # the app home is shared by the module's other tests
        with runner.registry.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not at.exception, [e.message for e in at.exception]
    source = at.selectbox(key="bh_source")  # a select box shows its options as text; a radio renders Markdown
    assert f"run {name} · {run_id}" in source.options
    assert all(name not in str(o) for r in at.radio for o in r.options)

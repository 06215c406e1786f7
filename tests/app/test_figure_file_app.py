"""The publication-figure file: kept while the chart it was made of is unchanged, dropped when the chart changes."""

from streamlit.testing.v1 import AppTest


def _script():
    import plotly.graph_objects as go
    import streamlit as st

    from subnetviz import ui

    def body():
        y = st.session_state.get("y", [1, 2, 3])
        ui.chart(go.Figure(go.Scatter(y=y), layout_title_text="A chart"), "c")
        ui.figure_download(["c"], "page")

    ui.run_page(body)


def _downloads(at) -> list:
    return [e for e in at.get("download_button")]


def test_a_made_figure_survives_a_rerun_that_rebuilds_the_same_chart(monkeypatch):
    """Pages redrawn every 2 s while a job runs (Training, Drivers, Bigram) rebuild every chart: the file just made
    vanished with its chart object before its "Download figure" could be clicked (compared by identity)."""
    import subnetviz.report.static as static

    # no browser needed: the file's bytes are made here (patched for this test only: the script runs in this process)
    monkeypatch.setattr(static, "unavailable", lambda: None)
    monkeypatch.setattr(static, "figure_bytes", lambda fig, fmt, scale=1.0: b"<svg>" + str(fig.data[0].y).encode())
    at = AppTest.from_function(_script, default_timeout=60).run()
    assert not _downloads(at)
    at.button(key="pub-make-page").click().run()
    assert len(_downloads(at)) == 1
    at.run()  # a full rerun: the same data, a new figure object
    assert len(_downloads(at)) == 1
    at.session_state["y"] = [4, 5, 6]  # new data: the file made of the old chart is no longer offered
    at.run()
    assert not _downloads(at) and not at.exception

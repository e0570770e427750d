"""The report of one run: folder shape, every figure, no external references, escaping, summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure as MplFigure

from llmsim.report import figures as F
from llmsim.report.build import write_report
from llmsim.report.run import load_run
from llmsim.report.summary import summarize
from llmsim.report.trace import load_trace, replica_spans
from tests.report.helpers import SCRIPT, TRACE, make_run, rich_rows, row

FIGURES = ["throughput", "breakdown", "scaling", "energy", "memory", "parity", "gantt"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("run") / "report-test" / "20260101-000000", rich_rows(), trace=True)
    write_report(run)
    return run


def test_report_folder_has_both_reports_and_every_figure(built: Path) -> None:
    for name in ("report.md", "report.html", "results.csv", "results.jsonl"):
        assert (built / name).is_file(), name
    md = (built / "report.md").read_text()
    page = (built / "report.html").read_text()
    for name in FIGURES:
        png = built / "figures" / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC), name
        assert f"](figures/{name}.png)" in md, name
        assert f'id="fig-{name}"><img src="data:image/png;base64,' in page, name
    assert "not shown" not in md and "could not draw" not in md
    assert page.count('<img src="data:image/png;base64,') == len(FIGURES)


def test_html_is_self_contained(built: Path) -> None:
    page = (built / "report.html").read_text()
    lowered = page.lower()
    for bad in ('src="http', "src='http", 'href="http', "href='http", "<link", "@import", "url("):
        assert bad not in lowered, bad
    assert all(v.startswith("data:image/png;base64,") for v in re.findall(r'src="([^"]*)"', page))
    assert all(v.startswith("#") for v in re.findall(r'href="([^"]*)"', page))
    assert "default-src 'none'" in page  # the browser itself refuses any external load


def test_rows_that_did_not_run_are_listed_with_their_reason(built: Path) -> None:
    for text, gt in (((built / "report.md").read_text(), ">"), ((built / "report.html").read_text(), "&gt;")):
        assert "strategy needs 2 devices" in text
        assert "needs 412.3 GB/device" in text and f"{gt} 80.0 GB" in text
        assert "skipped" in text and "does-not-fit" in text and "failed" in text


def test_user_text_is_escaped(built: Path) -> None:
    page = (built / "report.html").read_text()
    assert SCRIPT not in page and "<b>&" not in page
    assert "&lt;script&gt;alert(&#x27;boom&#x27;)&lt;/script&gt;" in page
    assert "broken &lt;b&gt;&amp;" in page
    assert page.count("<script>") == 1  # only the inline table sorter
    md = (built / "report.md").read_text()
    assert SCRIPT not in md and "\\<script>alert('boom')\\</script>" in md  # CommonMark backslash escapes
    assert "&gt;" not in md and "&lt;" not in md  # issue 15 item 11: report.md read as text had entities


def test_summary_names_the_winners_and_why_others_lose(built: Path) -> None:
    md = (built / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "the fastest strategy that fits is dp@nodes=4" in summary
    assert "The most energy-efficient is single at 20 mJ per token" in summary
    assert "pp4: 3.85× slower — 31.0% of its step is pipeline bubble" in summary
    assert "2 more cases ran on other device counts (1, 2)" in summary  # losing by size says nothing
    assert "zero0-big on roofline does not fit: needs 412.3 GB/device" in summary
    assert "Model against measurement on the same hardware: median error 10.0%" in summary


def test_tables_are_sortable_with_raw_values(built: Path) -> None:
    page = (built / "report.html").read_text()
    assert 'class="sortable num"' in page
    assert 'data-sort="0.26"' in page  # the step time of dp@nodes=4, sorted by value, shown as 260 ms
    assert ">260 ms<" in page


def test_figures_without_data_are_skipped_and_the_report_says_why(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [row("only", status="failed", error="boom")])
    paths = write_report(run)
    assert [p.name for p in paths] == ["report.md", "report.html"]
    md = (run / "report.md").read_text()
    assert md.count("not shown —") == len(FIGURES)
    assert "no case ran" in md and "no trace.json" in md
    assert "no strategy ran to completion" in md
    assert not list((run / "figures").glob("*.png")) if (run / "figures").exists() else True


def test_rebuilding_removes_figures_that_no_longer_have_data(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", rich_rows(), trace=True)
    write_report(run)
    (run / "trace.json").unlink()
    write_report(run)
    assert not (run / "figures" / "gantt.png").exists()
    assert (run / "figures" / "throughput.png").exists()


@pytest.mark.parametrize("name", ["throughput", "breakdown", "scaling", "energy", "memory", "parity"])
def test_figure_functions_return_a_figure_and_save_nothing(name: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    frame = load_run(make_run(tmp_path / "r", rich_rows())).frame
    fig, ax = getattr(F, name)(frame)
    assert isinstance(fig, MplFigure) and ax is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing written by the figure


def test_figure_functions_raise_no_data_on_an_empty_run() -> None:
    frame = load_run(Path("."), pd.DataFrame([row("x", status="failed", error="e").row()])).frame
    for name in ("throughput", "breakdown", "scaling", "energy", "memory", "parity"):
        with pytest.raises(F.NoData):
            getattr(F, name)(frame)


def test_every_case_tied_at_the_lowest_energy_is_named() -> None:
    """A fresh-user trial: two cases at the same lowest joules per token, and the summary named the first alone (as
    'the most energy-efficient', and 'It is also' of the fastest while another case had its energy)."""
    def head(rows: list) -> str:
        frame = pd.DataFrame([r.row() for r in rows])
        return summarize(frame)[1].text

    # the fastest is among the tied: the others tied with it are named
    text = head([row("dp", step=0.5, jpt=0.02), row("tp", step=1.0, jpt=0.02),
                 row("pp", step=2.0, jpt=0.02 * (1 + 1e-12)), row("single", step=3.0, jpt=0.05)])
    assert "It is also the most energy-efficient, at 20 mJ per token, tied with tp and pp." in text, text
    # the fastest is not: every tied case, and what they save against it
    text = head([row("dp", step=0.5, jpt=0.04), row("tp", step=1.0, jpt=0.02), row("pp", step=2.0, jpt=0.02)])
    assert "The most energy-efficient are tp and pp, tied at 20 mJ per token, 50.0% less than dp." in text, text
    assert "The most energy-efficient is" not in text
    # no tie: as before
    text = head([row("dp", step=0.5, jpt=0.04), row("tp", step=1.0, jpt=0.02), row("pp", step=2.0, jpt=0.021)])
    assert "The most energy-efficient is tp at 20 mJ per token, 50.0% less than dp." in text, text


def test_summary_of_a_run_without_rows() -> None:
    assert summarize(pd.DataFrame(columns=["status"]))[0].text == "This run has no result rows."


def test_trace_events_become_spans_of_one_replica(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(TRACE))
    spans = load_trace(path)
    assert len(spans) == 2 * 2 * 3 * 2 + 1  # X events of two replicas + one B/E pair
    one = replica_spans(spans)
    assert {s.replica for s in one} == {0}
    comm = [s for s in one if s.name == "allreduce"]
    assert comm[0].lane == "stage 0 / tid 1" and comm[0].dur_s == pytest.approx(1e-3)
    assert {s.lane for s in one} == {"stage 0 / tid 0", "stage 1 / tid 0", "stage 0 / tid 1"}


def test_names_with_dollar_signs_are_drawn_as_text(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [row("p$\\bad{$q", step=1.0, jpt=0.1, memory=1e9), row("c$", step=2.0)])
    write_report(run)
    md = (run / "report.md").read_text()
    assert "could not draw" not in md and (run / "figures" / "throughput.png").is_file()


def test_the_gantt_draws_a_long_timeline_one_artist_per_lane_and_kind() -> None:
    """A simulated GPT-3 step has tens of thousands of spans: one bar artist per (lane, kind), colors for
    every kind however many spans share it (it used to run out of colors after 996 spans)."""
    from llmsim.report.figures import gantt
    from llmsim.report.trace import Span

    spans = [Span(lane=f"stage {i % 4} / tid 0", name=f"F{i}", category="forward" if i % 3 else "backward",
                  start_s=i * 1e-3, dur_s=5e-4) for i in range(5000)]
    fig, ax = gantt(spans)
    assert len(ax.collections) == 4 * 2  # 4 lanes x (forward, backward)
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["backward", "forward"]
    assert ax.get_legend() is None  # below the lanes (a figure legend), never over stage 0 (issue 15 item 11)


@pytest.mark.parametrize("name", ["throughput", "breakdown", "scaling", "energy", "memory", "parity", "gantt"])
def test_figure_text_is_at_least_the_pages_smallest_text(name: str, tmp_path: Path) -> None:
    """Issue 15 item 11: bar labels were about 7 px. Every text artist, at the PNG's DPI, is at least
    raster.MIN_LABEL_PX (the browser test checks the PNG is shown at its natural size)."""
    from matplotlib.text import Text

    from llmsim.report.raster import DPI, MIN_LABEL_PX

    frame = load_run(make_run(tmp_path / "r", rich_rows())).frame
    fig, _ = F.gantt(load_trace_from(TRACE, tmp_path), case="pp4 on cluster") if name == "gantt" \
        else getattr(F, name)(frame)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip()]
    assert sizes and min(sizes) * DPI / 72 >= MIN_LABEL_PX


def load_trace_from(trace: dict, folder: Path):
    path = folder / "trace.json"
    path.write_text(json.dumps(trace))
    return load_trace(path)


def test_float_residue_in_a_breakdown_reads_as_zero() -> None:
    """Issue 15 item 11: '2.42e-08 µs (0%)' in the breakdown table (a simulated step minus its parts)."""
    from llmsim.report.tables import breakdown_table
    from llmsim.report.units import fmt_seconds

    frame = load_run(Path("."), pd.DataFrame([row("x", step=0.12, compute=0.12, comm=2.42e-14).row()])).frame
    table = breakdown_table(frame)
    assert table is not None and table.rows[0][6].text == "0 s (0%)"
    assert (fmt_seconds(2.5e-9), fmt_seconds(2.4e-14), fmt_seconds(0.0)) == ("2.5 ns", "< 1 ns", "0 s")


def test_the_priced_with_cell_names_a_modeled_recipe_and_what_a_measured_row_ran() -> None:
    """One narrow cell: a modeled row's kernel, library and training recipe; a measured row's attention kernel (what
    torch's SDPA ran: llmsim.measure.sdpa), marked as run, not priced; nothing where a row has none."""
    from llmsim.report.tables import priced_with

    assert priced_with({"kind": "modeled", "attention_kernel": "cudnn", "all_reduce": None, "optimizer": "foreach",
                        "master_weights": False}) == "cudnn, foreach, no fp32 master"
    assert priced_with({"kind": "modeled", "attention_kernel": "flash3", "all_reduce": "vllm"}) == "flash3, vllm"
    assert priced_with({"kind": "modeled", "attention_kernel": "flash3", "all_reduce": "vllm",
                        "fuse_allreduce_rms": True}) == "flash3, vllm, AR+RMSNorm fused"
    assert priced_with({"kind": "modeled", "attention_kernel": "flash3", "fuse_allreduce_rms": False}) == "flash3"
    assert priced_with({"kind": "measured", "attention_kernel": "cudnn"}) == "ran cudnn"
    assert priced_with({"kind": "measured", "attention_kernel": float("nan")}) is None


def test_a_figure_at_axis_values_near_the_float_limit_draws_without_a_warning() -> None:
    """Trial 40: a serving run at rate 1e308 printed matplotlib's 'overflow encountered in multiply' (its tick
    arithmetic) on stderr; the figure is drawn all the same, quietly."""
    import warnings

    from matplotlib.figure import Figure as MplFigure

    from llmsim.report.raster import png

    fig = MplFigure()
    ax = fig.add_subplot()
    ax.plot([0.0, 1e308], [0.1, 0.2], marker="o")   # a linear axis: its tick step overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert png(fig).startswith(b"\x89PNG")


def test_a_figure_becomes_a_palette_png_of_its_size_at_the_reports_dpi_the_same_bytes_each_time() -> None:
    """raster.png draws into Agg's buffer and quantises it: a palette image of at most PALETTE colours, figsize x
    DPI pixels (8 x 3 in at 110 dpi: 880 x 330), and the same data gives the same bytes (the committed sample)."""
    import io

    from matplotlib.figure import Figure as MplFigure
    from PIL import Image

    from llmsim.report.raster import DPI, PALETTE, png

    def drawn() -> MplFigure:
        fig = MplFigure(figsize=(8, 3), layout="constrained")
        ax = fig.add_subplot()
        for k in range(6):
            ax.plot(range(40), [k * x for x in range(40)], label=f"series {k}")
        ax.legend()
        return fig

    data = png(drawn())
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P" and image.size == (8 * DPI, 3 * DPI)
    assert len(image.getcolors(maxcolors=256) or []) <= PALETTE
    assert png(drawn()) == data


def _stage_spans(stages: int, lanes: tuple[str, ...] = ("compute", "comm", "p2p")) -> list:
    from llmsim.report.trace import Span

    return [Span(lane=f"stage {s} / {lane}", name="F0", category="forward", start_s=s * 1e-3, dur_s=5e-4)
            for s in range(stages) for lane in lanes]


def test_the_gantt_orders_lanes_naturally_and_keeps_every_stage_when_they_fit() -> None:
    """Trial 46: pp 12 read stage 0, 1, 10, 11, 2, ... (lanes sorted as text)."""
    fig, ax = F.gantt(_stage_spans(12, ("compute",)), case="pp12 on cluster")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f"stage {s} / compute" for s in range(12)]
    assert ax.get_title(loc="left") == "pp12 on cluster: one pipeline replica"


def test_the_gantt_cuts_whole_stages_and_says_how_many_lanes_it_shows() -> None:
    """Trial 46: 12 stages x 3 lanes were cut at 32 lanes as text (stage 9 gone, no word of it)."""
    fig, ax = F.gantt(_stage_spans(12), case="pp12 on cluster")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f"stage {s} / {lane}" for s in range(10) for lane in ("comm", "compute", "p2p")]
    assert ax.get_title(loc="left") == ("pp12 on cluster: one pipeline replica\n30 of 36 lanes shown: stage 0 to "
                                        "stage 9; stage 10 to stage 11 left out")


def test_the_scaling_figure_labels_each_device_count_it_plots_and_enough_step_times() -> None:
    """Trial 46: points at 96 and 192 devices had one x tick, '128'; 40 to 120 s was labelled at 50 s and 100 s."""
    frame = pd.DataFrame([r.model_dump() for r in [
        row("dp@n=96", strategy="dp", n=96, step=120.0), row("dp@n=192", strategy="dp", n=192, step=70.0, ideal=60.0),
        row("tp@n=96", strategy="tp", n=96, step=110.0), row("tp@n=192", strategy="tp", n=192, step=80.0, ideal=55.0)]])
    fig, (ax_t, ax_e) = F.scaling(frame)
    fig.canvas.draw()
    for ax in (ax_t, ax_e):
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels == ["96", "192"]
    lo, hi = ax_t.get_ylim()
    shown = [t for t in ax_t.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(shown) >= 3

"""report.html in a real browser: headless Chromium opens it from disk with no network, and the test
fails on any console message, script error, blocked load or image that does not decode.

A checker script is injected at the top of a copy of the report. It records errors as they happen,
and after the load event it checks every image, clicks a table header to exercise the inline sorter,
and writes its findings into the DOM, which `--dump-dom` prints. Chromium's own console log (on
stderr with --enable-logging) is checked as well: the report itself never logs anything.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmsim.report.build import write_comparison, write_report
from tests.report.helpers import TRACE, make_run, rich_rows, row

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package chromium; "
                                                     ".ci/run installs it)"),
]

CHECKER = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__problems.push(t && t.tagName ? 'failed to load ' + t.tagName : 'script error: ' + e.message);
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.__problems.push('blocked by CSP: ' + e.blockedURI);
});
['error', 'warn'].forEach(function (level) {
  var orig = console[level];
  console[level] = function () {
    window.__problems.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' '));
    orig.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var result = {images: 0, broken: [], sorted: null, problems: window.__problems};
  try {
    Array.prototype.forEach.call(document.images, function (img) {
      result.images += 1;
      if (!img.complete || img.naturalWidth === 0) { result.broken.push(img.alt); }
    });
    var th = Array.prototype.find.call(document.querySelectorAll('th.sortable'),
                                       function (c) { return c.textContent === SORT_HEADER; });
    th.click();
    var values = Array.prototype.map.call(th.closest('table').tBodies[0].rows, function (r) {
      return parseFloat(r.cells[th.cellIndex].getAttribute('data-sort'));
    });
    result.sorted = {order: th.getAttribute('aria-sort'), values: values};
  } catch (err) {
    result.problems.push('checker: ' + err);
  }
  document.body.setAttribute('data-check', JSON.stringify(result));
});
</script>"""


def open_in_chromium(page: Path, tmp_path: Path, sort_header: str) -> tuple[dict, str]:
    """Load a copy of `page` with the checker; returns the checker's findings and Chromium's stderr."""
    probe = page.with_name("checked-" + page.name)
    source = page.read_text(encoding="utf-8")
    checker = CHECKER.replace("SORT_HEADER", json.dumps(sort_header))
    probe.write_text(source.replace("<head>", "<head>" + checker, 1), encoding="utf-8")
    return _checker_findings(probe, tmp_path, ["--disable-quic", "--disable-background-networking",
                                               "--disable-component-update", "--disable-sync",
                                               "--enable-logging=stderr", "--v=0"])


def _checker_findings(probe: Path, tmp_path: Path, flags: list[str]) -> tuple[dict, str]:
    """Load `probe` (a page with a checker script in its head) in headless Chromium with `flags`; the
    checker's findings (its data-check attribute in the dumped DOM) and Chromium's stderr."""
    profile = tmp_path / "chromium-profile"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *flags,
           f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'data-check="([^"]*)"', proc.stdout)
    assert found, f"the checker did not run (exit {proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1))), proc.stderr


def assert_clean(result: dict, stderr: str, images: int) -> None:
    console = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    assert result["problems"] == []
    assert result["broken"] == []
    assert result["images"] == images
    sorted_ = result["sorted"]
    assert sorted_["order"] == "ascending"
    values = [v for v in sorted_["values"] if v is not None]
    assert values == sorted(values) and len(values) >= 2


def test_run_report_renders_in_chromium_without_errors(tmp_path: Path) -> None:
    run = make_run(tmp_path / "report-test" / "run", rich_rows(), trace=True)
    write_report(run)
    result, stderr = open_in_chromium(run / "report.html", tmp_path, "step time")
    assert_clean(result, stderr, images=7)


def test_comparison_renders_in_chromium_without_errors(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", [row("x", step=1.0), row("y", step=2.0)])
    b = make_run(tmp_path / "b", [row("x", step=0.8), row("y", step=2.5)])
    out = write_comparison([a, b], tmp_path / "cmp")
    result, stderr = open_in_chromium(out / "report.html", tmp_path, "change B vs A")
    assert_clean(result, stderr, images=2)


LAYOUT_CHECKER = """<script>
window.addEventListener('load', function () {
  var width = window.innerWidth, wide = [], scrolled = [], shrunk = [], captions = {};
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 0.5) { wide.push(el.tagName + '.' + el.className + ' ' + Math.round(r.right)); }
  });
  document.querySelectorAll('.tablewrap').forEach(function (w) {
    if (w.scrollWidth > w.clientWidth) { scrolled.push(w.querySelector('th').textContent + ' ' + w.scrollWidth); }
  });
  document.querySelectorAll('figure').forEach(function (f) {
    var img = f.querySelector('img');
    if (img.width < img.naturalWidth) { shrunk.push(f.id + ' ' + img.width + '/' + img.naturalWidth); }
    captions[f.id] = f.querySelector('figcaption').textContent;
  });
  document.body.setAttribute('data-check', JSON.stringify({
    width: width, page: document.documentElement.scrollWidth, wide: wide, scrolled: scrolled, shrunk: shrunk,
    captions: captions}));
});
</script>"""


def layout_check(page: Path, tmp_path: Path) -> dict:
    """LAYOUT_CHECKER's findings for `page` in a 1400 x 900 headless Chromium window."""
    probe = page.with_name("layout-" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + LAYOUT_CHECKER, 1),
                     encoding="utf-8")
    return _checker_findings(probe, tmp_path, ["--hide-scrollbars", "--window-size=1400,900"])[0]


def test_the_report_fits_a_1400_px_window_and_names_the_traced_case(tmp_path: Path) -> None:
    """Issue 15 item 11, in a 1400-px window: the header line clipped ('torch 2.1'), the results table hid its
    last column behind an inner scrollbar, and the Gantt figure did not say which case it shows. Nothing
    may be wider than the window, no table may scroll inside the page, no figure may be shrunk (its labels
    keep their designed size, raster.MIN_LABEL_PX) and the timeline names its case."""
    rows = rich_rows()
    rows = [r.model_copy(update={"extra": {**r.extra, "trace_file": "trace/pp4.json"}}) if r.case == "pp4" else r
            for r in rows]
    rows += [row(f"tp8-pp4-interleaved-recompute-selective@nodes={n}", n=n * 8, step=1.0 / n, jpt=0.02,
                 memory=12e9) for n in (8, 16, 32, 64, 128)]
    run = make_run(tmp_path / "layout" / "run", rows)
    (run / "trace").mkdir()
    (run / "trace" / "pp4.json").write_text(json.dumps(TRACE))
    (run / "environment.json").write_text(json.dumps({
        "python": "3.11.7", "cpu_model": "AMD EPYC 7B13 64-Core Processor with a long marketing name",
        "packages": {"torch": "2.13.0+cu128-a-very-long-local-version-label"}, "git_commit": "be2461254b" * 4}))
    write_report(run)
    result = layout_check(run / "report.html", tmp_path)
    assert result["width"] == 1400
    assert result["page"] <= result["width"] and result["wide"] == [], result["wide"][:10]
    assert result["scrolled"] == []
    assert result["shrunk"] == []
    assert "pp4 on roofline" in result["captions"]["fig-gantt"]


def test_a_serving_report_fits_the_window_and_its_figures_name_their_cases(tmp_path: Path) -> None:
    """The serving figures (knee, latency CDFs, timeline) in a 1400-px window: none shrunk or wider than the
    page, and the CDF and timeline captions say which cases they draw."""
    from tests.report.test_serving_report import simulated_serving_run

    run = simulated_serving_run(tmp_path)
    write_report(run)
    result = layout_check(run / "report.html", tmp_path)
    assert result["page"] <= result["width"] and result["wide"] == [], result["wide"][:10]
    assert result["shrunk"] == []
    captions = result["captions"]
    assert "single@rate=5000 (roofline)" in captions["fig-latency_cdf"]
    assert "(roofline), the highest rate that met the SLO" in captions["fig-serving_timeline"]
    assert "highest rate whose requests met the SLO" in captions["fig-serving_knee"]

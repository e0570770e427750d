"""report.html: one self-contained file that opens from disk, with no server and no network.

Figures are embedded as base64 PNG `data:` URIs; the stylesheet and the table sorter are inline. A
Content-Security-Policy meta tag forbids every external load (`default-src 'none'`), so even a
mistake in a later change cannot make the report fetch anything: the browser would refuse.

Every piece of text comes from a `Document` and goes through `html.escape` here, and only here:
scenario names, case names and error messages are user input.
"""

from __future__ import annotations

import base64
import html
import re

from llmsim.report.document import Block, Bullets, Document, Figure, Paragraph, Point, Section, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#fafbfc}
main{max-width:1360px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 6px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
h3{font-size:15px;margin:22px 0 6px}
.meta{color:#56607a;margin:0 0 14px}.meta span{margin-right:18px;display:inline-block;max-width:100%;overflow-wrap:anywhere}
.summary{background:#fff;border:1px solid #dde1e7;border-left:4px solid #4C72B0;border-radius:6px;padding:10px 18px}
.summary li{margin:4px 0}.summary ul ul{color:#3d4557}
nav a{margin-right:14px;color:#30589c;text-decoration:none}nav a:hover{text-decoration:underline}
.tablewrap{overflow-x:auto;margin:8px 0 4px}
table{border-collapse:collapse;background:#fff;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e2e6ec;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f6;position:sticky;top:0}
th.sortable{cursor:pointer;user-select:none}th.sortable::after{content:" \\2195";color:#9aa3b5;font-size:11px}
th[aria-sort=ascending]::after{content:" \\25B2";color:#30589c}th[aria-sort=descending]::after{content:" \\25BC";color:#30589c}
td.num,th.num{text-align:right;white-space:nowrap}tbody tr:nth-child(even){background:#f7f9fb}
tbody tr:hover{background:#eef4ff}td.better{color:#1a7f37;font-weight:600}td.worse{color:#b42318;font-weight:600}
caption{caption-side:bottom;text-align:left;color:#56607a;font-size:12px;padding-top:4px}
figure{margin:14px 0 22px;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#3d4557;font-size:13px;margin-top:6px}
.skipped{color:#6b7285;font-style:italic}
"""

# Click (or Enter on) a header to sort by that column; again to reverse. Numbers sort by the raw value
# in data-sort, empty cells last. No library: a report must open with no network.
SORTER = """
(function(){
  function key(td,num){var v=td.getAttribute('data-sort');if(v===null||v===''){return null;}
    return num?parseFloat(v):v;}
  function sort(th){
    var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex,num=th.classList.contains('num');
    var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir===1?'ascending':'descending');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a.cells[col],num),y=key(b.cells[col],num);
      if(x===null&&y===null){return 0;}if(x===null){return 1;}if(y===null){return -1;}
      return (x<y?-1:x>y?1:0)*dir;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  document.querySelectorAll('th.sortable').forEach(function(th){
    th.tabIndex=0;
    th.addEventListener('click',function(){sort(th);});
    th.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();sort(th);}});
  });
})();
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def render_table(table: Table) -> str:
    numeric = table.numeric or [False] * len(table.columns)
    head = "".join(f'<th class="sortable{" num" if n else ""}" scope="col">{esc(c)}</th>'
                   for c, n in zip(table.columns, numeric))
    body = []
    for row in table.rows:
        cells = []
        for c, n in zip(row, numeric):
            classes = " ".join(x for x in ("num" if n else "", c.tone or "") if x)
            attrs = f' class="{classes}"' if classes else ""
            if c.sort is not None:  # floats to 12 digits: -19.999999999999996 sorts and reads as -20
                attrs += f' data-sort="{esc(f"{c.sort:.12g}" if isinstance(c.sort, float) else c.sort)}"'
            cells.append(f"<td{attrs}>{esc(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{esc(table.caption)}</caption>" if table.caption else ""
    return (f'<div class="tablewrap"><table>{caption}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def render_figure(fig: Figure) -> str:
    if fig.png is None:
        return f'<p class="skipped" id="fig-{esc(fig.name)}">{esc(fig.title)}: not shown — {esc(fig.skipped)}.</p>'
    data = base64.b64encode(fig.png).decode("ascii")
    caption = esc(fig.title) + (f" — {esc(fig.caption)}" if fig.caption else "")
    return (f'<figure id="fig-{esc(fig.name)}"><img src="data:image/png;base64,{data}" alt="{esc(fig.title)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return render_table(block)
    return render_figure(block)


def render_points(points: list[Point]) -> str:
    items = []
    for p in points:
        sub = "<ul>" + "".join(f"<li>{esc(d)}</li>" for d in p.details) + "</ul>" if p.details else ""
        items.append(f"<li>{esc(p.text)}{sub}</li>")
    return '<section class="summary"><ul>' + "".join(items) + "</ul></section>"


def render_section(section: Section) -> str:
    anchor = section.anchor or slug(section.title)
    return f'<section id="{esc(anchor)}"><h2>{esc(section.title)}</h2>' + "".join(
        render_block(b) for b in section.blocks) + "</section>"


def render_html(doc: Document) -> str:
    """The whole report as one HTML string."""
    meta = "".join(f"<span><b>{esc(k)}:</b> {esc(v)}</span>" for k, v in doc.meta)
    nav = "".join(f'<a href="#{esc(s.anchor or slug(s.title))}">{esc(s.title)}</a>' for s in doc.sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(doc.title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main><h1>{esc(doc.title)}</h1>"
        f'<p class="meta">{meta}</p>'
        f"<h2>Summary</h2>{render_points(doc.summary)}"
        f"<nav>{nav}</nav>"
        + "\n".join(render_section(s) for s in doc.sections)
        + f"</main><script>{SORTER}</script></body></html>\n"
    )

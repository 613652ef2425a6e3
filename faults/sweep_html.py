"""A fault sweep (:class:`faults.sweep.Sweep`) as one self-contained HTML page: a heat map
whose rows are the tests and whose columns are the site=fault pairs, a colour per outcome.
Hovering a cell shows its outcome and first error line; clicking it shows its error, its
traceback and the command that reproduces it, in a panel below the map. No external asset:
the styles and the few lines of script are inline.
"""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Final

from faults.sweep import CHARS, LEFT_OUT

if TYPE_CHECKING:
    from faults.sweep import Sweep

__all__ = ["COLOURS", "render"]

#: The colour of each outcome, and of a cell the budget left out.
COLOURS: Final = {
    "survived": "#2e9e44",
    "failed": "#d7263d",
    "hung": "#7b2cbf",
    "leaked": "#f08c00",
    "not reached": "#adb5bd",
    "skipped": "#dee2e6",
    "left out": "#f8f9fa",
}

_STYLE: Final = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#212529}
table{border-collapse:collapse}
th,td{padding:0;border:1px solid #fff}
th.col{height:14em;white-space:nowrap;vertical-align:bottom;font-weight:normal}
th.col div{transform:translate(0.6em,0) rotate(-60deg);width:1.6em;font-size:12px}
th.row{text-align:right;padding-right:.6em;font-weight:normal;white-space:nowrap}
td.cell{width:1.6em;height:1.6em;text-align:center;color:#fff;cursor:pointer}
td.cell:hover{outline:2px solid #212529}
.legend span{display:inline-block;padding:.2em .6em;margin-right:.4em;color:#fff}
#detail{margin-top:1em;padding:1em;border:1px solid #ced4da;display:none}
#detail pre{white-space:pre-wrap;background:#f1f3f5;padding:.6em;max-height:30em;overflow:auto}
"""

_SCRIPT: Final = """
const cells = JSON.parse(document.getElementById('cells').textContent);
function show(id){
  const c = cells[id], d = document.getElementById('detail');
  d.style.display = 'block';
  d.querySelector('h2').textContent = c.outcome + ': ' + c.test + '  ' + c.spec;
  d.querySelector('.error').textContent = c.error || '(no error)';
  d.querySelector('.command').textContent = c.command;
  d.querySelector('.traceback').textContent = c.traceback || '(no traceback)';
}
document.querySelectorAll('td.cell[data-id]').forEach(
  td => td.addEventListener('click', () => show(td.dataset.id)));
"""


def render(sweep: Sweep) -> str:
    """The page of ``sweep``."""
    columns = sweep.columns()
    results = {(r.test, r.cell.column): (i, r) for i, r in enumerate(sweep.results)}
    left = {(c.test, c.column) for c in sweep.left_out}
    tests = [t for t in sweep.tests if any(k[0] == t for k in (*results, *left))]
    head = "".join(f'<th class="col"><div>{escape(c)}</div></th>' for c in columns)
    rows = []
    for test in tests:
        tds = []
        for column in columns:
            found = results.get((test, column))
            if found is not None:
                i, r = found
                tip = f"{r.outcome}: {column}" + (f"\n{r.error}" if r.error else "")
                tds.append(
                    f'<td class="cell" data-id="{i}" data-outcome="{escape(r.outcome)}" '
                    f'style="background:{COLOURS[r.outcome]}" title="{escape(tip)}">'
                    f"{escape(CHARS[r.outcome])}</td>"
                )
            elif (test, column) in left:
                tds.append(
                    f'<td class="cell" data-outcome="left out" style="background:'
                    f'{COLOURS["left out"]};color:#495057" title="left out by the budget">'
                    f"{LEFT_OUT}</td>"
                )
            else:
                tds.append('<td title="site not reached by this test"></td>')
        rows.append(f'<tr><th class="row">{escape(test)}</th>{"".join(tds)}</tr>')
    counts = sweep.counts()
    pale = ("skipped", "left out")
    legend = "".join(
        f'<span style="background:{COLOURS[name]}{";color:#495057" if name in pale else ""}">'
        f"{escape(name)}: {counts.get(name, len(sweep.left_out))}</span>"
        for name in COLOURS
    )
    data = [{"spec": r.spec, "test": r.test, "outcome": r.outcome, "error": r.error,
             "command": r.command, "traceback": r.traceback} for r in sweep.results]  # fmt: skip
    # the JSON sits in a <script> element: keep "</" from closing it
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fault sweep</title>
<style>{_STYLE}</style></head><body>
<h1>Fault sweep</h1>
<p>{len(sweep.results)} cells over {len(tests)} tests, seed {sweep.seed}. Hover a cell for its
error; click it for the traceback and the command that reproduces it.</p>
<p class="legend">{legend}</p>
<table><thead><tr><th></th>{head}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<div id="detail"><h2></h2><p>error:</p><pre class="error"></pre>
<p>reproduce with:</p><pre class="command"></pre>
<p>traceback:</p><pre class="traceback"></pre></div>
<script type="application/json" id="cells">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""

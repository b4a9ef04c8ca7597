"""The drill's HTML report: the figures, the checks, and a timeline picture (inline SVG, nothing to fetch)."""

from __future__ import annotations

import html
from typing import Any

WIDTH, LEFT, RIGHT = 1100, 150, 30
LABEL_CHAR_PX, LABEL_ROW_PX = 5.6, 13  # sans-serif at 10 px: a character's mean width, a row's height
COLORS = {"setup": "#8da0cb", "normal": "#66c2a5", "failure": "#e41a1c", "detection": "#fc8d62",
          "failover": "#e78ac3", "recovery": "#a6d854", "recovered": "#1b9e77"}
MARKERS = {"failover": "#e41a1c", "recovered": "#1b9e77", "gpu_rented": "#377eb8", "standby_created": "#984ea3",
           "standby_replaced": "#984ea3"}


def describe_figure(value: Any) -> str:
    """A figure as a person writes it: numbers rounded, lists and mappings in words, never a Python repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {describe_figure(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return "; ".join(describe_figure(v) for v in value) or "none"
    return "none" if value is None else str(value)


def label_rows(starts: list[float], widths: list[float]) -> list[int]:
    """For labels starting at ``starts`` (pixels, in order) and this wide, the row each goes on: the first
    row whose last label ends before this one begins, so no two labels overlap however short their phases."""
    ends: list[float] = []
    rows = []
    for start, width in zip(starts, widths, strict=True):
        row = next((i for i, end in enumerate(ends) if end + 4 <= start), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = start + width
        rows.append(row)
    return rows


def _x(t: float, origin: float, span: float) -> float:
    return LEFT + (t - origin) / span * (WIDTH - LEFT - RIGHT)


def timeline_svg(data: dict[str, Any]) -> str:
    """Phases as bars; syncs, probe failures and key events as marks on a shared time axis."""
    origin = data["started_at"]
    phases = data["phases"]
    end = max([p["started"] + p["seconds"] for p in phases] + [origin + 1])
    span = end - origin
    starts = [_x(p["started"], origin, span) for p in phases]
    labels = [f'{p["title"]} {p["seconds"]:.1f} s' for p in phases]
    label_row = label_rows(starts, [LABEL_CHAR_PX * len(text) for text in labels])
    extra = LABEL_ROW_PX * max(label_row, default=0)  # each further row of labels pushes the rest down
    height = 260 + extra
    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="drill timeline">',
             '<rect width="100%" height="100%" fill="#fafafa"/>']
    row = {"phases": 30, "syncs": 110 + extra, "probes": 150 + extra, "events": 188 + extra}
    for name, y in row.items():
        parts.append(f'<text x="10" y="{y + 15}" font-size="13" font-family="sans-serif">{name}</text>')
    for phase, x0, text, level in zip(phases, starts, labels, label_row, strict=True):
        x1 = _x(phase["started"] + phase["seconds"], origin, span)
        color = COLORS.get(phase["key"], "#999")
        parts.append(f'<rect x="{x0:.1f}" y="{row["phases"]}" width="{max(2.0, x1 - x0):.1f}" height="40" '
                     f'fill="{color}"><title>{html.escape(phase["title"])}: {phase["seconds"]:.2f} s</title></rect>')
        label_y = row["phases"] + 55 + LABEL_ROW_PX * level
        parts.append(f'<line x1="{x0:.1f}" y1="{row["phases"] + 40}" x2="{x0:.1f}" y2="{label_y - 9}" '
                     f'stroke="{color}" stroke-width="1"/>')
        parts.append(f'<text x="{x0 + 2:.1f}" y="{label_y}" font-size="10" font-family="sans-serif">'
                     f'{html.escape(text)}</text>')
    events = data["timeline"]["events"]
    normal = next((p for p in phases if p["key"] == "normal"), None)
    for sync in (normal or {}).get("figures", {}).get("passes", []):
        x = _x(sync["finished_at"], origin, span)
        parts.append(f'<line x1="{x:.1f}" y1="{row["syncs"]}" x2="{x:.1f}" y2="{row["syncs"] + 25}" '
                     f'stroke="#1b9e77" stroke-width="2"><title>pass {sync["seq"]}</title></line>')
    for tick in data["timeline"]["ticks"]:
        failing = tick["primary_failures"] > 0
        x = _x(tick["at"], origin, span)
        parts.append(f'<circle cx="{x:.1f}" cy="{row["probes"] + 12}" r="3" '
                     f'fill="{"#e41a1c" if failing else "#bbbbbb"}"><title>tick {tick["tick"]}: '
                     f'{tick["primary_failures"]} failed checks</title></circle>')
    for event in events:
        marker = MARKERS.get(event["kind"])
        if marker is None:
            continue
        color = marker
        x = _x(event["at"], origin, span)
        parts.append(f'<line x1="{x:.1f}" y1="{row["events"]}" x2="{x:.1f}" y2="{row["events"] + 40}" '
                     f'stroke="{color}" stroke-width="3"><title>{html.escape(event["kind"])}: '
                     f'{html.escape(event["reason"])}</title></line>')
    for seconds in range(0, int(span) + 1, max(1, int(span // 10) or 1)):
        x = _x(origin + seconds, origin, span)
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" font-size="10" font-family="sans-serif">{seconds}s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(data: dict[str, Any]) -> str:
    """The whole HTML page."""
    verdict = "PASSED" if data["ok"] else "FAILED"
    checks = "".join(f'<li class="{"ok" if c["ok"] else "fail"}">{html.escape(c["name"])}: '
                     f'{html.escape(c["detail"])}</li>' for c in data["checks"])
    rows = "".join(f'<tr><td>{html.escape(p["title"])}</td><td>{p["seconds"]:.3f} s</td>'
                   f'<td>{data["seed"].get(p["key"], "n/a")} s</td><td>{html.escape(_figures(p))}</td></tr>'
                   for p in data["phases"])
    loss = data["data_loss"]
    loss_text = (f"{loss['files_lost']} files / {loss['bytes_lost']} bytes lost; RPO {loss['rpo_seconds']} s"
                 if loss else "no GPU lost in this scenario")
    opts = data["options"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dumont drill: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
h1 span.PASSED {{ color: #1b9e77; }} h1 span.FAILED {{ color: #e41a1c; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
li.ok::marker {{ content: "✔ "; color: #1b9e77; }} li.fail::marker {{ content: "✘ "; color: #e41a1c; }}
</style></head>
<body>
<h1>Dumont drill <span class="{verdict}">{verdict}</span></h1>
<p>Scenario <b>{html.escape(opts['scenario'])}</b>, profile <b>{html.escape(opts['profile'])}</b>,
workspace {opts['size_bytes'] / 1e6:.0f} MB; total {data['total_seconds']:.2f} s (the seed's simulation:
{data['seed']['total']} s). Every figure was measured in this run.</p>
<h2>Timeline</h2>
{timeline_svg(data)}
<h2>Checks</h2><ul>{checks}</ul>
<h2>Phases</h2>
<table><tr><th>phase</th><th>measured</th><th>seed (simulated)</th><th>figures</th></tr>{rows}</table>
<h2>Data loss</h2><p id="loss">{html.escape(loss_text)}</p>
</body></html>
"""


def _figures(phase: dict[str, Any]) -> str:
    figures = {k: v for k, v in phase["figures"].items() if k != "passes"}
    if isinstance(figures.get("salvaged"), dict):
        salvaged = figures["salvaged"]
        figures["salvaged"] = f"{salvaged['count']} file(s) in {salvaged['folder']}"
    steps = ", ".join(f"{s.get('name', s.get('step'))} {s['seconds']:.2f} s" for s in phase["steps"])
    text = ", ".join(f"{k.replace('_', ' ')}: {describe_figure(v)}" for k, v in figures.items())
    return "; ".join(x for x in (text, steps) if x)

"""A plan as a Gantt chart in SVG: one lane per machine, jobs coloured by setup.

Pure: a `Problem` and its `Plan` in, SVG text out. Changeovers are drawn apart
from the jobs (hatched; manual ones outlined, since they need an operator),
bed clearings as dark slivers after their job, devices held for a job on
another machine (`reserves`: a robot tending it) as dashed outlines, operator shifts as shaded
bands behind every lane, and `now` as a red line. Each element carries
`data-*` attributes (machine, job, kind), so a test or a script can read the
chart back without guessing from its geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

from cellctl.planning.model import Assignment, Plan, Problem

# Colour-blind-safe hues (Okabe–Ito, then Tol's muted), cycled when setups outnumber them.
PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#AA4499",
)  # fmt: skip

CHART_W = 1000  # pixels for the time axis
LABEL_W = 120  # machine names
LANE_H = 34
TOP = 48  # title and axis
BOTTOM = 56  # legend (its first row; each further row adds LEGEND_ROW_H)
LEGEND_ROW_H = 18


def setup_colours(problem: Problem) -> dict[str, str]:
    """Each setup a fixed colour: sorted, so the same problem always looks the same."""
    setups = sorted({j.setup for j in problem.jobs} | {m.initial_setup for m in problem.machines})
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(setups)}


def _ticks(horizon: int) -> list[int]:
    """About ten ticks, 1-2-5 spaced."""
    target = horizon / 10
    step = next(b * 10**k for k in range(10) for b in (1, 2, 5) if b * 10**k >= target)
    return list(range(0, horizon + 1, step))


def gantt_svg(problem: Problem, result: Plan, now: int | None = None, title: str = "") -> str:
    """The chart as a complete SVG document."""
    clears = {j.id: j.clear for j in problem.jobs}
    a_end = [a.end for a in result.assignments]
    a_end += [
        a.clear_start + clears[a.job] for a in result.assignments if a.clear_start is not None
    ]
    horizon = max([1, *a_end, *([now] if now is not None else [])])
    scale = CHART_W / horizon
    colours = setup_colours(problem)
    setups = {j.id: j.setup for j in problem.jobs}
    lanes = {m.id: i for i, m in enumerate(problem.machines)}
    height = TOP + LANE_H * len(lanes) + BOTTOM + LEGEND_ROW_H * (len(_legend_rows(colours)) - 1)
    width = LABEL_W + CHART_W + 20

    def x(t: float) -> float:
        return LABEL_W + t * scale

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        '<defs><pattern id="co" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#888" stroke-width="2"/></pattern></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    f = result.figures
    u = problem.time_unit
    heading = title or f"{result.method}: {len(result.assignments)} jobs"
    out.append(
        f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(heading)} — '
        f"weighted tardiness {f.weighted_tardiness}, changeover {f.changeover} {escape(u)}, "
        f"makespan {f.makespan} {escape(u)}</text>"
    )
    lanes_bottom = TOP + LANE_H * len(lanes)
    for start, end in problem.shifts or ():
        lo, hi = max(0, start), min(horizon, end)
        if hi > lo:
            out.append(
                f'<rect data-kind="shift" x="{x(lo):.1f}" y="{TOP}" width="{(hi - lo) * scale:.1f}"'
                f' height="{LANE_H * len(lanes)}" fill="#e8f4e8"/>'
            )
    for t in _ticks(horizon):
        out.append(
            f'<line x1="{x(t):.1f}" y1="{TOP - 4}" x2="{x(t):.1f}" y2="{lanes_bottom}" '
            f'stroke="#ddd"/><text x="{x(t):.1f}" y="{TOP - 8}" text-anchor="middle">{t}</text>'
        )
    for m in problem.machines:
        y = TOP + LANE_H * lanes[m.id]
        out.append(
            f'<g class="lane" data-machine={quoteattr(m.id)}>'
            f'<line x1="{LABEL_W}" y1="{y + LANE_H}" x2="{LABEL_W + CHART_W}" '
            f'y2="{y + LANE_H}" stroke="#ccc"/>'
            f'<text x="6" y="{y + LANE_H / 2 + 4}">{escape(m.id)}</text>'
        )
        for a in (a for a in result.assignments if a.machine == m.id):
            out.extend(_assignment(problem, a, y, x, scale, colours, setups[a.job], clears[a.job]))
        out.append("</g>")
    for a in result.assignments:
        for device, start, end in a.reserved:
            if device in lanes:
                out.append(_hold(a.job, device, start, end, TOP + LANE_H * lanes[device], x, scale))
    if now is not None:
        out.append(
            f'<line data-kind="now" x1="{x(now):.1f}" y1="{TOP - 4}" x2="{x(now):.1f}" '
            f'y2="{lanes_bottom}" stroke="#d00" stroke-width="2"/>'
        )
    out.extend(_legend(colours, lanes_bottom + 20))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _assignment(
    problem: Problem,
    a: Assignment,
    y: int,
    x: Callable[[float], float],
    scale: float,
    colours: dict[str, str],
    setup: str,
    clear: int,
) -> list[str]:
    parts: list[str] = []
    top, h = y + 5, LANE_H - 10
    if a.changeover:
        manual = problem.is_manual(a.machine, a.setup_before, setup)
        outline = ' stroke="#333" stroke-width="1.5"' if manual else ""
        tip = f"{'manual' if manual else 'automatic'} changeover {a.setup_before} → {setup}"
        parts.append(
            f'<rect data-kind="changeover" data-job={quoteattr(a.job)} '
            f'data-manual="{str(manual).lower()}" x="{x(a.changeover_start):.1f}" y="{top}" '
            f'width="{max(1.0, a.changeover * scale):.1f}" height="{h}" fill="url(#co)"{outline}>'
            f"<title>{escape(tip)}</title></rect>"
        )
    width = max(1.0, (a.end - a.start) * scale)
    parts.append(
        f'<rect data-kind="job" data-job={quoteattr(a.job)} data-setup={quoteattr(setup)} '
        f'x="{x(a.start):.1f}" y="{top}" width="{width:.1f}" height="{h}" '
        f'fill="{colours[setup]}" stroke="white"><title>'
        f"{escape(f'{a.job}: {setup}, {a.start}–{a.end} {problem.time_unit}')}</title></rect>"
    )
    if width > 7 * len(a.job):  # the label only where it fits
        parts.append(f'<text x="{x(a.start) + 3:.1f}" y="{top + h / 2 + 4}">{escape(a.job)}</text>')
    if a.clear_start is not None:
        parts.append(
            f'<rect data-kind="clear" data-job={quoteattr(a.job)} x="{x(a.clear_start):.1f}" '
            f'y="{top}" width="{max(1.0, clear * scale):.1f}" height="{h}" fill="#444">'
            f"<title>bed cleared</title></rect>"
        )
    return parts


def _hold(
    job: str, device: str, start: int, end: int, y: int, x: Callable[[float], float], scale: float
) -> str:
    """A device held by a job on another machine (a robot tending it): an outline."""
    return (
        f'<rect data-kind="hold" data-job={quoteattr(job)} data-machine={quoteattr(device)} '
        f'x="{x(start):.1f}" y="{y + 8}" width="{max(1.0, (end - start) * scale):.1f}" '
        f'height="{LANE_H - 16}" fill="none" stroke="#555" stroke-dasharray="3 2">'
        f"<title>{escape(f'held for {job}, {start}–{end}')}</title></rect>"
    )


def _legend_items(colours: dict[str, str]) -> list[tuple[str, str, str]]:
    """(fill, stroke, text) per legend entry: the setups, then the marks."""
    items = [(colour, "none", setup) for setup, colour in colours.items()]
    items += [
        ("url(#co)", "#999", "changeover (outlined: manual)"),
        ("#444", "#999", "bed clearing"),
        ("#e8f4e8", "#999", "operator shift"),
    ]
    return items


def _legend_rows(colours: dict[str, str]) -> list[list[tuple[str, str, str, int]]]:
    """The legend wrapped into rows that fit the chart's width: (fill, stroke, text, x)."""
    rows: list[list[tuple[str, str, str, int]]] = [[]]
    cx, right = 8, LABEL_W + CHART_W
    for fill, stroke, text in _legend_items(colours):
        w = 24 + 7 * len(text)
        if rows[-1] and cx + w > right:
            rows.append([])
            cx = 8
        rows[-1].append((fill, stroke, text, cx))
        cx += w
    return rows


def _legend(colours: dict[str, str], y: int) -> list[str]:
    parts = []
    for k, row in enumerate(_legend_rows(colours)):
        ry = y + k * LEGEND_ROW_H
        for fill, stroke, text, cx in row:
            parts.append(
                f'<rect x="{cx}" y="{ry - 10}" width="12" height="12" fill="{fill}" '
                f'stroke="{stroke}"/><text x="{cx + 16}" y="{ry}">{escape(text)}</text>'
            )
    return parts

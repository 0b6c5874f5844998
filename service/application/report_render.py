"""A report's files (service/application/reports.py): `report.md`, one CSV file per
table, and PNG charts.

The charts need matplotlib, an optional extra (`pip install 'stock-worker[reports]'`),
imported only here and only when a report is written; it draws with the Agg canvas
(no display, no pyplot state shared between threads). Without it the Markdown and
the CSV files are written all the same, and the Markdown says the charts were skipped.

Each file is written beside its final name and renamed into place, so a reader never
sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from service.application.reports import CHARTED_MOVERS, Report, ReportKind, Table

MARKDOWN_NAME = "report.md"
#: Rows of a table shown in the Markdown (the CSV file has every row).
MARKDOWN_ROWS = 25
#: Why charts are missing when matplotlib cannot be imported.
NO_MATPLOTLIB = (
    "matplotlib is not installed; install the reports extra "
    "(pip install 'stock-worker[reports]') for the PNG charts"
)
#: Values shown as percentages in the Markdown (fractions in the CSV files and JSON).
SHARES = {"share", "cumulativeShare", "inStockRate", "accuracy", "onTimeShare", "countAccuracy"}

TITLES = {
    ReportKind.DAILY: "Daily low-stock report",
    ReportKind.WEEKLY: "Weekly stock movement report",
    ReportKind.MONTHLY: "Monthly optimisation and supplier report",
}

SUMMARY_LABELS = {
    "asOf": "levels as of",
    "lowStock": "variants at or below threshold or reorder point",
    "outOfStock": "of them out of stock",
    "belowReorderPoint": "of them at or below their reorder point",
    "suggestedUnits": "units suggested to order",
    "unitsSold": "units sold",
    "variantsSold": "variants sold",
    "stockouts": "stockouts (available reached 0)",
    "variantsOutOfStock": "variants out of stock at some moment",
    "anomalies": "anomalies raised",
    "anomaliesByRule": "anomalies by rule",
    "reconciliationRuns": "reconciliation runs",
    "reconciliationOutcome": "reconciliation outcome (last run)",
    "reconciliationLastRunId": "last reconciliation run",
    "reconciliationLastFinishedAt": "last reconciliation finished",
    "reconciliationLastRunInPeriod": "last run in this period",
    "countLines": "count lines applied",
    "countAccuracy": "count accuracy",
    "abcVariants": "variants per ABC class",
    "unitsSold90Days": "units sold over the 90 days before the end",
    "reorderPoints": "variants with a reorder point",
    "reorderPointsConfiguredAbove": "configured above the recommendation",
    "reorderPointsConfiguredBelow": "configured below the recommendation",
    "suppliers": "suppliers",
    "deliveries": "deliveries with an order time",
}


def render(report: Report, directory: Path) -> dict[str, Any]:
    """Write every file of `report` into `directory` (created); what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_files = []
    for table in report.tables.values():
        name = f"{table.name}.csv"
        _write(directory / name, csv_text(table))
        csv_files.append(name)
    charts: list[tuple[str, str]] = []
    skipped: str | None = None
    try:
        charts = draw_charts(report, directory)
    except ImportError:
        skipped = NO_MATPLOTLIB
    _write(directory / MARKDOWN_NAME, markdown(report, charts, skipped))
    return {
        "markdown": MARKDOWN_NAME,
        "csv": csv_files,
        "charts": [name for name, _ in charts],
        "chartsSkipped": skipped,
    }


def _write(path: Path, content: str | bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    if isinstance(content, bytes):
        partial.write_bytes(content)
    else:
        partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)


# ------------------------------------------------------------------ CSV


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def csv_text(table: Table) -> str:
    """The table as CSV: camelCase keys as the header, every row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow([csv_value(row.get(c.key)) for c in table.columns])
    return out.getvalue()


# ------------------------------------------------------------------ Markdown


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in SHARES and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def markdown(report: Report, charts: list[tuple[str, str]], skipped: str | None) -> str:
    period = report.period
    lines = [f"# {TITLES[report.kind]} {period.label}", ""]
    extent = (
        "the whole period"
        if period.complete
        else f"the period so far (it ends {_when(period.full_end)})"
    )
    lines += [
        f"Period: {_when(period.start)} to {_when(period.end)}, {extent}. "
        f"Written {_when(report.generated_at)} from the audit log; figures as defined in "
        "docs/analytics.md.",
        "",
        "## Summary",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    for key, value in report.summary.items():
        lines.append(f"| {SUMMARY_LABELS.get(key, key)} | {_cell(key, value)} |")
    lines += ["", "## Charts", ""]
    if skipped is not None:
        lines.append(f"Charts skipped: {skipped}.")
    for name, title in charts:
        lines += [f"![{title}]({name})", ""]
    for table in report.tables.values():
        lines += ["", f"## {table.title}", ""]
        if table.note:
            lines += [table.note, ""]
        if not table.rows:
            lines.append(f"None. ([{table.name}.csv]({table.name}.csv) has the header.)")
            continue
        lines.append("| " + " | ".join(c.heading for c in table.columns) + " |")
        lines.append("|" + " --- |" * len(table.columns))
        for row in table.rows[:MARKDOWN_ROWS]:
            lines.append("| " + " | ".join(_cell(c.key, row.get(c.key)) for c in table.columns)
                         + " |")
        more = len(table.rows) - MARKDOWN_ROWS
        lines.append("")
        if more > 0:
            lines.append(f"{more:,} more rows in [{table.name}.csv]({table.name}.csv).")
        else:
            lines.append(f"Also as [{table.name}.csv]({table.name}.csv).")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ charts

Chart = Callable[[Any, Report], str]


def draw_charts(report: Report, directory: Path) -> list[tuple[str, str]]:
    """Each chart of the report's kind as `<name>.png`: [(file name, title)]. Raises
    ImportError without matplotlib (before writing anything)."""
    import matplotlib  # noqa: F401  (the optional extra: ImportError without it)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = []
    for name, chart in CHARTS[report.kind]:
        figure = Figure(figsize=(11, 5.5), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        title = chart(figure, report)
        out = io.BytesIO()
        figure.savefig(out, format="png")
        _write(directory / f"{name}.png", out.getvalue())
        drawn.append((f"{name}.png", title))
    return drawn


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
            fontsize=13, color="0.35")


def _integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _rows_from_top(ax: Any, rows: int) -> None:
    """Horizontal bars from the top down, as thin as for 8 rows when there are fewer."""
    ax.set_ylim(max(rows, 8) - 0.5, -0.5)


def _subtitle(report: Report) -> str:
    period = report.period
    so_far = "" if period.complete else f", so far (to {_when(period.end)})"
    return f"{period.label}{so_far}"


def _available_top_movers(figure: Any, report: Report) -> str:
    import matplotlib.dates as mdates

    period = report.period
    ax = figure.add_subplot()
    movers = report.tables["top_movers"].rows[:CHARTED_MOVERS]
    steps = report.tables["available_top_movers"].rows
    title = f"Available over time, top {len(movers) or CHARTED_MOVERS} movers by units sold"
    first = period.end
    for mover in movers:
        mine = [r for r in steps if r["variantId"] == mover["variantId"]]
        if not mine:
            continue
        first = min(first, mine[0]["at"])
        times = [r["at"] for r in mine] + [period.end]
        levels = [r["available"] for r in mine] + [mine[-1]["available"]]
        ax.step(times, levels, where="post", linewidth=2, marker="o", markersize=3,
                markevery=list(range(len(mine))),
                label=f"{mover['variantId']} ({mover['unitsSold']:,} sold)")
    if not movers:
        _empty(ax, "nothing sold in this period")
    ax.set_title(f"{title} — {_subtitle(report)}")
    ax.set_xlabel("time (UTC); a dot is a change")
    ax.set_ylabel("available (units)")
    # From the period's start, or from the first change when the movers are younger.
    if first >= period.end:
        first = period.start
    ax.set_xlim(first - (period.end - first) * 0.02 if first > period.start else first,
                period.end)
    top = max([1] + [r["available"] for r in steps])
    ax.set_ylim(-0.03 * top, top * 1.08)  # a line at 0 stays visible above the axis
    _integer_axis(ax.yaxis)
    locator = mdates.AutoDateLocator(minticks=5, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    )
    ax.grid(True, alpha=0.3)
    if movers:
        ax.legend(title="variant", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return title


def _day_labels(days: list[date]) -> tuple[list[str], int]:
    if len(days) <= 8:
        return [d.strftime("%a %d %b") for d in days], 0
    return [d.strftime("%d %b") for d in days], 60


def _stockouts_per_day(figure: Any, report: Report) -> str:
    ax = figure.add_subplot()
    rows = report.tables["stockouts_per_day"].rows
    days = [r["day"] for r in rows]
    positions = list(range(len(days)))
    width = 0.4
    ax.bar([p - width / 2 for p in positions], [r["stockouts"] for r in rows], width,
           label="stockouts (available reached 0)", color="tab:red")
    ax.bar([p + width / 2 for p in positions], [r["variantsOutOfStock"] for r in rows], width,
           label="variants out of stock at some moment", color="tab:gray")
    labels, rotation = _day_labels(days)
    ax.set_xticks(positions, labels, rotation=rotation)
    ax.set_xlim(-0.6, max(len(days), 7) - 0.4)  # a week's width at least: no giant bars
    title = "Stockouts per day"
    ax.set_title(f"{title} — {_subtitle(report)}")
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0, top=max([1] + [r["stockouts"] for r in rows]
                                  + [r["variantsOutOfStock"] for r in rows]) * 1.15)
    _integer_axis(ax.yaxis)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    if not any(r["stockouts"] or r["variantsOutOfStock"] for r in rows):
        _empty(ax, "no stockouts in this period")
    return title


def _count_accuracy(figure: Any, report: Report) -> str:
    ax = figure.add_subplot()
    rows = report.tables["count_accuracy"].rows
    positions = list(range(len(rows)))
    values = [(r["accuracy"] or 0.0) * 100 for r in rows]
    bars = ax.bar(positions, values, 0.6, color="tab:blue", label="lines within tolerance")
    for bar, row, value in zip(bars, rows, values, strict=True):
        lines = row["countLines"]
        text = "no counts" if not lines else f"{value:.0f}%\n{lines} lines"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=9)
    labels = [f"{r['week']}\n{r['weekStart'].strftime('%d %b')}" for r in rows]
    ax.set_xticks(positions, labels)
    title = "Count accuracy per week"
    ax.set_title(f"{title} — {_subtitle(report)}")
    ax.set_xlabel("ISO week (UTC, from Monday)")
    ax.set_ylabel("count lines within tolerance (%)")
    ax.set_ylim(0, 115)
    ax.set_yticks([0, 20, 40, 60, 80, 100])
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    return title


def _lead_times(figure: Any, report: Report) -> str:
    ax = figure.add_subplot()
    rows = report.tables["lead_times"].rows
    positions = list(range(len(rows)))
    height = 0.38
    ax.barh([p - height / 2 for p in positions], [r["measuredDays"] or 0 for r in rows],
            height, label="measured this period (average)", color="tab:orange")
    ax.barh([p + height / 2 for p in positions], [r["configuredDays"] or 0 for r in rows],
            height, label="configured (average over its variants)", color="tab:blue")
    for y, row in zip(positions, rows, strict=True):
        for offset, key in ((-height / 2, "measuredDays"), (height / 2, "configuredDays")):
            if row[key] is not None:
                ax.annotate(f"{row[key]:.1f} d", (row[key], y + offset), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(positions, [r["supplierId"] for r in rows])
    _rows_from_top(ax, len(rows))
    ax.set_xlim(left=0, right=max([1.0] + [r["measuredDays"] or 0 for r in rows]
                                  + [r["configuredDays"] or 0 for r in rows]) * 1.2)
    title = "Supplier lead times: measured against configured"
    ax.set_title(f"{title} — {_subtitle(report)}")
    ax.set_xlabel("lead time (days)")
    ax.set_ylabel("supplier")
    ax.grid(True, axis="x", alpha=0.3)
    if rows:
        ax.legend(loc="lower right")
    else:
        _empty(ax, "no suppliers")
    return title


def _low_stock(figure: Any, report: Report) -> str:
    ax = figure.add_subplot()
    rows = [r for r in report.tables["low_stock"].rows if r["daysOfCover"] is not None][:20]
    positions = list(range(len(rows)))
    bars = ax.barh(positions, [r["daysOfCover"] for r in rows], 0.6, color="tab:red",
                   label="days of cover (available / average daily sales, 30 days)")
    for bar, row in zip(bars, rows, strict=True):
        ax.annotate(f"{row['available']} available", (bar.get_width(), bar.get_y()
                    + bar.get_height() / 2), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(positions, [r["variantId"] for r in rows])
    _rows_from_top(ax, len(rows))
    title = f"Days of cover of the {len(rows)} most urgent low-stock variants that sell"
    ax.set_title(f"{title} — {_subtitle(report)}")
    ax.set_xlabel("days of cover (days)")
    ax.set_ylabel("variant")
    ax.set_xlim(left=0, right=max([1.0] + [r["daysOfCover"] for r in rows]) * 1.25)
    ax.grid(True, axis="x", alpha=0.3)
    if rows:
        ax.legend(loc="lower right")
    else:
        _empty(ax, "no low-stock variant with sales in the last 30 days")
    return title


CHARTS: dict[ReportKind, list[tuple[str, Chart]]] = {
    ReportKind.DAILY: [("low_stock", _low_stock)],
    ReportKind.WEEKLY: [
        ("available_top_movers", _available_top_movers),
        ("stockouts_per_day", _stockouts_per_day),
        ("count_accuracy", _count_accuracy),
    ],
    ReportKind.MONTHLY: [
        ("stockouts_per_day", _stockouts_per_day),
        ("count_accuracy", _count_accuracy),
        ("lead_times", _lead_times),
    ],
}

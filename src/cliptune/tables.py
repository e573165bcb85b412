"""Plain-text tables of retrieval metrics for the console."""

from __future__ import annotations

from cliptune.metrics import METRICS

# Columns in the registry's order; a recall after one of the same direction is titled
# by its K alone ("i2t R@1  R@5  R@10").
COLUMNS = tuple((m.label if m.key.endswith("_r1") or not m.percent else m.label.split()[1],
                 m.key) for m in METRICS.values())


def format_metrics_table(results: dict[str, dict[str, float]]) -> str:
    """One row per split; recalls in percent, as in the literature."""
    header = ["split"] + [title for title, _ in COLUMNS]
    rows = [header]
    for split, metrics in results.items():
        row = [split]
        for _, key in COLUMNS:
            value = metrics.get(key)
            if value is None:
                row.append("-")
            elif METRICS[key].percent:
                row.append(f"{100 * value:.1f}")
            else:
                row.append(f"{value:.1f}" if key != "loss" else f"{value:.3f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)

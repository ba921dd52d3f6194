"""chart: a chart image -> title, axes (title + unit), categories and numeric series; Markdown, CSV, JSON."""

from __future__ import annotations

from pixdesk.tasks.base import (
    Task,
    TaskOptions,
    TaskResult,
    fmt_number,
    markdown_table,
    parse_json_output,
    table_forms,
)
from pixdesk.tasks.numbers import parse_number

MAX_POINTS = 24
MAX_SERIES = 8
_VALUE = {"type": ["number", "null"], "minimum": -1e15, "maximum": 1e15}  # bounded: no exponents, no 1e999


def _text(n: int) -> dict:
    return {"type": "string", "maxLength": n}


_AXIS = {
    "type": "object",
    "properties": {"title": _text(80), "unit": _text(24)},
    "required": ["title", "unit"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {
        "title": _text(120),
        "chart_type": {"enum": ["bar", "line", "pie", "scatter", "area", "other"]},
        "x_axis": _AXIS,
        "y_axis": _AXIS,
        "categories": {"type": "array", "maxItems": MAX_POINTS, "items": _text(60)},
        "series": {
            "type": "array",
            "maxItems": MAX_SERIES,
            "items": {
                "type": "object",
                "properties": {
                    "name": _text(60),
                    "values": {"type": "array", "maxItems": MAX_POINTS, "items": _VALUE},
                },
                "required": ["name", "values"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "chart_type", "x_axis", "y_axis", "categories", "series"],
    "additionalProperties": False,
}

SYSTEM = (
    "You read charts. Transcribe the data of the chart in the image exactly; do not invent points.\n"
    "Answer with one JSON object and nothing else, in this shape:\n"
    '{"title": "chart title", "chart_type": "bar", "x_axis": {"title": "Year", "unit": ""}, '
    '"y_axis": {"title": "Revenue", "unit": "million USD"}, "categories": ["2021", "2022"], '
    '"series": [{"name": "Revenue", "values": [12.5, 14]}]}\n'
    "chart_type is one of bar, line, pie, scatter, area, other. categories are the x-axis labels (or pie "
    "slices) in order. Each series has one value per category, as a plain number without units or thousands "
    'separators (1,250 becomes 1250; 12% becomes 12 with unit "%"). Use null for a value you cannot read and '
    '"" for a missing title or unit.'
)


def postprocess(text: str, options: TaskOptions) -> TaskResult:
    warnings: list[str] = []
    raw = parse_json_output(text, warnings)
    data = normalize(raw if isinstance(raw, dict) else {}, warnings)
    return TaskResult("chart", text, data, render(data), warnings)


def normalize(raw: dict, warnings: list[str]) -> dict:
    """Coerce the answer to the schema's shape; every coercion and inconsistency is reported."""
    axes = {}
    for key in ("x_axis", "y_axis"):
        axis = raw.get(key) if isinstance(raw.get(key), dict) else {}
        axes[key] = {"title": str(axis.get("title") or ""), "unit": str(axis.get("unit") or "")}
    categories = [str(c) for c in raw.get("categories") or []]
    series = []
    for i, s in enumerate(raw.get("series") or []):
        s = s if isinstance(s, dict) else {}
        values = []
        for j, v in enumerate(s.get("values") or []):
            number, unit = parse_number(v)
            if not isinstance(v, (int, float)) and v is not None:
                warnings.append(f"series[{i}].values[{j}] {v!r} read as {fmt_number(number) or 'null'}")
                if unit and not axes["y_axis"]["unit"]:
                    axes["y_axis"]["unit"] = unit
            values.append(number)
        if categories and len(values) != len(categories):
            warnings.append(
                f"series {s.get('name', i)!r} has {len(values)} values for {len(categories)} categories"
            )
        series.append({"name": str(s.get("name") or f"series {i + 1}"), "values": values})
    return {"title": str(raw.get("title") or ""), "chart_type": str(raw.get("chart_type") or "other"), **axes,
            "categories": categories, "series": series}  # fmt: skip


def _columns(data: dict) -> tuple[list[str], list[list[object]]]:
    x, y = data["x_axis"], data["y_axis"]
    first = x["title"] or "category"
    if x["unit"]:
        first += f" ({x['unit']})"
    header = [first] + [s["name"] + (f" ({y['unit']})" if y["unit"] else "") for s in data["series"]]
    n = max([len(data["categories"])] + [len(s["values"]) for s in data["series"]])
    rows = []
    for i in range(n):
        label = data["categories"][i] if i < len(data["categories"]) else ""
        rows.append([label] + [s["values"][i] if i < len(s["values"]) else None for s in data["series"]])
    return header, rows


def render(data: dict) -> dict[str, str]:
    header, rows = _columns(data)
    md = (f"**{data['title']}**\n\n" if data["title"] else "") + markdown_table(header, rows)
    return table_forms(md, header, rows, data)


TASK = Task(
    name="chart",
    description="Chart image -> title, axes with units, numeric series; as a Markdown table, CSV and JSON",
    system_prompt=SYSTEM,
    instruction="Transcribe this chart's data as JSON.",
    postprocess=postprocess,
    schema=SCHEMA,
    max_tokens=1536,
)

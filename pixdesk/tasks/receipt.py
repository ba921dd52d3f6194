"""receipt: a receipt photo -> merchant, ISO date, ISO 4217 currency, items, totals; sums checked, not fixed.

A receipt whose numbers disagree is returned as read, with each disagreement in `warnings`: the user sees the
paper's numbers, and a silent "fix" would hide a misread digit.
"""

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
from pixdesk.tasks.numbers import ISO_4217, currency_code, iso_date, parse_number

MAX_ITEMS = 40
_MONEY = {"type": ["number", "null"], "minimum": -1e9, "maximum": 1e9}  # bounded: no exponents
_AMOUNTS = ("subtotal", "tax", "tip", "total")
_ITEM_NUMBERS = ("quantity", "unit_price", "total")

SCHEMA = {
    "type": "object",
    "properties": {
        "merchant": {"type": "string", "maxLength": 80},
        "date": {"type": ["string", "null"], "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "currency": {"type": ["string", "null"], "pattern": r"^[A-Z]{3}$"},
        "items": {
            "type": "array",
            "maxItems": MAX_ITEMS,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 80},
                    "quantity": _MONEY,
                    "unit_price": _MONEY,
                    "total": _MONEY,
                },  # fmt: skip
                "required": ["name", "quantity", "unit_price", "total"],
                "additionalProperties": False,
            },
        },
        **{k: _MONEY for k in _AMOUNTS},
    },
    "required": ["merchant", "date", "currency", "items", *_AMOUNTS],
    "additionalProperties": False,
}

SYSTEM = (
    "You transcribe receipts. Copy what is printed on the receipt in the image; do not compute or correct.\n"
    "Answer with one JSON object and nothing else, in this shape:\n"
    '{"merchant": "Café Rosa", "date": "2024-03-07", "currency": "EUR", "items": [{"name": "Espresso", '
    '"quantity": 2, "unit_price": 2.5, "total": 5}], "subtotal": 5, "tax": 0.8, "tip": null, "total": 5.8}\n'
    "date is YYYY-MM-DD; currency is the ISO 4217 code (EUR, USD, GBP, ...). Amounts are plain numbers "
    "with a dot as decimal separator and no currency symbols. Use null where the receipt shows nothing."
)

TOLERANCE = 0.011  # money is printed to the cent; allow one cent of rounding


def postprocess(text: str, options: TaskOptions) -> TaskResult:
    warnings: list[str] = []
    raw = parse_json_output(text, warnings)
    data = normalize(raw if isinstance(raw, dict) else {}, warnings)
    warnings += check_sums(data)
    return TaskResult("receipt", text, data, render(data), warnings)


def _number(value: object, where: str, warnings: list[str]) -> float | None:
    number, _unit = parse_number(value)
    if value is not None and not isinstance(value, (int, float)):
        warnings.append(f"{where} {value!r} read as {fmt_number(number) or 'null'}")
    return number


def normalize(raw: dict, warnings: list[str]) -> dict:
    currency = raw.get("currency")
    code = currency_code(currency)
    if currency is not None and code != currency:
        warnings.append(f"currency {currency!r} read as {code}")
    if code is not None and code not in ISO_4217:
        warnings.append(f"currency {code!r} is not a common ISO 4217 code")
    date, warn = iso_date(raw.get("date"), month_first=code == "USD")
    if warn:
        warnings.append(warn)
    elif raw.get("date") not in (None, date):
        warnings.append(f"date {raw.get('date')!r} read as {date}")
    items = []
    for i, it in enumerate(raw.get("items") or []):
        it = it if isinstance(it, dict) else {}
        entry = {"name": str(it.get("name") or "")}
        for k in _ITEM_NUMBERS:
            entry[k] = _number(it.get(k), f"items[{i}].{k}", warnings)
        items.append(entry)
    out = {"merchant": str(raw.get("merchant") or ""), "date": date, "currency": code, "items": items}
    out.update({k: _number(raw.get(k), k, warnings) for k in _AMOUNTS})
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE + 1e-9 * max(abs(a), abs(b))


def check_sums(data: dict) -> list[str]:
    """Each disagreement between the receipt's own numbers, as a sentence; nothing is changed."""
    warnings = []
    for i, it in enumerate(data["items"]):
        q, p, t = it["quantity"], it["unit_price"], it["total"]
        if None not in (q, p, t) and not _close(q * p, t):
            warnings.append(f"items[{i}] {it['name']!r}: {fmt_number(q)} x {fmt_number(p)} = "
                            f"{fmt_number(round(q * p, 2))}, but its total is {fmt_number(t)}")  # fmt: skip
    totals = [it["total"] for it in data["items"]]
    items_sum = round(sum(totals), 2) if totals and None not in totals else None
    sub, tax, tip, total = (data[k] for k in _AMOUNTS)
    if items_sum is not None and sub is not None and not _close(items_sum, sub):
        warnings.append(f"the items add up to {fmt_number(items_sum)}, but the subtotal is {fmt_number(sub)}")
    base = sub if sub is not None else items_sum
    if base is not None and total is not None:
        extra = (tax or 0) + (tip or 0)
        # tax already inside the subtotal (VAT receipts) is fine: either reading may match
        if not _close(base + extra, total) and not _close(base + (tip or 0), total):
            what = "subtotal" if sub is not None else "items"
            parts = " + ".join(
                f"{k} {fmt_number(v)}" for k, v in (("tax", tax), ("tip", tip)) if v is not None
            )
            lhs = f"{what} {fmt_number(base)}" + (f" + {parts}" if parts else "")
            warnings.append(
                f"{lhs} = {fmt_number(round(base + extra, 2))}, but the total is {fmt_number(total)}"
            )
    return warnings


def render(data: dict) -> dict[str, str]:
    header = ["item", "quantity", "unit price", "total"]
    rows = [[it["name"], it["quantity"], it["unit_price"], it["total"]] for it in data["items"]]
    head = " · ".join(x for x in (data["merchant"], data["date"], data["currency"]) if x)
    sums = [f"{k}: {fmt_number(data[k])}" for k in _AMOUNTS if data[k] is not None]
    md = (
        (f"**{head}**\n\n" if head else "")
        + markdown_table(header, rows)
        + ("\n" + " · ".join(sums) + "\n" if sums else "")
    )
    return table_forms(md, header, rows, data)


TASK = Task(
    name="receipt",
    description="Receipt image -> JSON (merchant, ISO date, currency, items, subtotal, tax, tip, total); "
    "sums checked",
    system_prompt=SYSTEM,
    instruction="Transcribe this receipt as JSON.",
    postprocess=postprocess,
    schema=SCHEMA,
    max_tokens=1536,
)

"""Post-processing of realistic model answers: HTML extraction and checks, chart tables, receipts, dates."""

from __future__ import annotations

import csv
import io
import json

import pytest

from pixdesk.tasks.base import TaskOptions
from pixdesk.tasks.chart import postprocess as chart
from pixdesk.tasks.html import TAILWIND_CDN, check_html, extract_html
from pixdesk.tasks.html import postprocess as html
from pixdesk.tasks.numbers import currency_code, iso_date, parse_number
from pixdesk.tasks.receipt import postprocess as receipt

OPTS = TaskOptions()
DOC = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Login</title><style>body{font-family:sans-serif}</style></head>
<body><main><h1>Sign in</h1><form><input type="email"><br><button>Go</button></form><p>Help</main></body>
</html>"""


def test_html_from_a_fence_with_prose_around():
    text = f"Sure! Here is the page:\n\n```html\n{DOC}\n```\n\nI used a flex layout. Let me know!"
    r = html(text, OPTS)
    assert r.data["html"] == DOC and r.data["problems"] == [] and r.rendered["html"] == DOC


def test_html_unfenced_with_trailing_prose():
    r = html(f"{DOC}\n\nThis page recreates the login screen with a form.", OPTS)
    assert r.data["html"] == DOC
    assert "text after the HTML was dropped" in r.warnings and r.data["problems"] == []


def test_html_fragment_is_wrapped_and_unclosed_fence_read():
    r = html('```html\n<div class="card"><h2>Title</h2><span>x</span></div>', TaskOptions(tailwind=True))
    doc = r.data["html"]
    assert (
        doc.startswith("<!DOCTYPE html>")
        and '<div class="card">' in doc
        and f'<script src="{TAILWIND_CDN}">' in doc
    )
    assert r.data["problems"] == []


def test_html_problems_are_reported():
    head = '<html><head><link rel="stylesheet" href="https://x.example/a.css"></head>'
    doc = head + "<body><div><span>a</div></section></body></html>"
    problems = check_html(doc)
    assert any("x.example" in p for p in problems)
    assert any("<span> is not closed" in p for p in problems)
    assert any("</section>" in p and "closes nothing" in p for p in problems)
    assert check_html("just words") == ["the document has no elements"]
    assert check_html("<div>ok</div>") == ["the document has neither <html> nor <body>"]
    assert extract_html("no markup here") == ("", ["the answer contains no HTML"])
    assert any(
        "script" in p for p in check_html(f'<html><body><script src="{TAILWIND_CDN}"></script></body></html>')
    )


def test_chart_with_units_and_thousands_separators():
    answer = """```json
{"title": "Revenue", "chart_type": "bar", "x_axis": {"title": "Year", "unit": ""},
 "y_axis": {"title": "Revenue", "unit": ""}, "categories": ["2022", "2023", "2024"],
 "series": [{"name": "EU", "values": ["1,250.5 kEUR", "1.300,25 kEUR", null]},
            {"name": "US", "values": [980, 1020.75]}]}
```"""
    r = chart(answer, OPTS)
    assert r.data["series"][0]["values"] == [1250.5, 1300.25, None]
    assert r.data["y_axis"]["unit"] == "kEUR"
    assert any("around its JSON" in w for w in r.warnings)
    assert any("'1,250.5 kEUR' read as 1250.5" in w for w in r.warnings)
    assert any("'US' has 2 values for 3 categories" in w for w in r.warnings)
    md = r.rendered["markdown"].splitlines()
    assert (
        md[2] == "| Year | EU (kEUR) | US (kEUR) |"
        and md[4] == "| 2022 | 1250.5 | 980 |"
        and md[6] == "| 2024 |  |  |"
    )
    rows = list(csv.reader(io.StringIO(r.rendered["csv"])))
    assert rows[0] == ["Year", "EU (kEUR)", "US (kEUR)"] and rows[2] == ["2023", "1300.25", "1020.75"]
    assert json.loads(r.rendered["json"])["series"][1]["values"] == [980, 1020.75]


def test_receipt_sums_that_disagree_are_reported_not_fixed():
    answer = json.dumps({
        "merchant": "Café Rosa", "date": "07.03.2024", "currency": "€",
        "items": [{"name": "Espresso", "quantity": 2, "unit_price": 2.5, "total": 5.5},
                  {"name": "Croissant", "quantity": 1, "unit_price": "3,20", "total": 3.2}],
        "subtotal": 8.2, "tax": 0.82, "tip": None, "total": 9.5,
    })  # fmt: skip
    r = receipt(answer, OPTS)
    d = r.data
    assert d["date"] == "2024-03-07" and d["currency"] == "EUR"
    assert d["items"][0]["total"] == 5.5 and d["total"] == 9.5  # as printed
    joined = "\n".join(r.warnings)
    assert "2 x 2.5 = 5, but its total is 5.5" in joined
    assert "the items add up to 8.7, but the subtotal is 8.2" in joined
    assert "subtotal 8.2 + tax 0.82 = 9.02, but the total is 9.5" in joined
    assert "'3,20' read as 3.2" in joined and "currency '€' read as EUR" in joined


def test_receipt_that_adds_up_has_no_warnings_and_vat_included_is_fine():
    good = {"merchant": "Kiosk", "date": "2024-05-01", "currency": "CHF",
            "items": [{"name": "Water", "quantity": 3, "unit_price": 1.1, "total": 3.3}],
            "subtotal": 3.3, "tax": 0.25, "tip": None, "total": 3.3}  # fmt: skip
    r = receipt(json.dumps(good), OPTS)
    assert r.warnings == [] and r.data["total"] == 3.3
    assert "| Water | 3 | 1.1 | 3.3 |" in r.rendered["markdown"]


@pytest.mark.parametrize(("text", "month_first", "iso", "warns"), [
    ("2024-03-07", False, "2024-03-07", False),
    ("2024/3/7", False, "2024-03-07", False),
    ("07.03.2024", False, "2024-03-07", False),
    ("7 March 2024", False, "2024-03-07", False),
    ("Mar 7th, 2024", False, "2024-03-07", False),
    ("03/07/24", True, "2024-03-07", True),
    ("07/03/2024", False, "2024-03-07", True),
    ("13/03/2024", True, "2024-03-13", False),
    ("31.02.2024", False, None, True),
    ("soon", False, None, True),
])  # fmt: skip
def test_dates_in_several_formats(text, month_first, iso, warns):
    got, warning = iso_date(text, month_first=month_first)
    assert got == iso and (warning is not None) == warns


def test_receipt_usd_dates_are_month_first():
    r = receipt(json.dumps({"merchant": "Deli", "date": "03/07/2024", "currency": "USD", "items": [],
                            "subtotal": None, "tax": None, "tip": None, "total": 4}), OPTS)  # fmt: skip
    assert r.data["date"] == "2024-03-07" and any("ambiguous" in w for w in r.warnings)


def test_numbers_and_currencies():
    assert parse_number("1,234,567") == (1234567.0, "")
    assert parse_number("1 234,5 €") == (1234.5, "€")
    assert parse_number("(4.00)") == (-4.0, "")
    assert parse_number("12 %") == (12.0, "%")
    assert parse_number("n/a") == (None, "n/a")
    assert parse_number(float("inf")) == (None, "")
    assert [currency_code(x) for x in ("eur", "£", "US$", "Fr. 3", "", None)] == [
        "EUR",
        "GBP",
        "USD",
        "CHF",
        None,
        None,
    ]

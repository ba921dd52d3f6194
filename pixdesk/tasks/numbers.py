"""Numbers, currencies and dates as models write them: "1,234.50", "1.234,50 €", "12 %", "03/04/2024".

Used on unconstrained answers (remote engines, older models); constrained answers already hold JSON numbers
and ISO dates, and pass through unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
import re

_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW", "₽": "RUB", "₺": "TRY",
            "₪": "ILS", "₫": "VND", "฿": "THB", "zł": "PLN", "kr": "SEK", "CHF": "CHF",
            "Fr.": "CHF"}  # fmt: skip
# Codes a receipt is likely to carry; a code outside this list is reported, not rejected.
ISO_4217 = frozenset(
    "AED ARS AUD BGN BRL CAD CHF CLP CNY COP CZK DKK EGP EUR GBP HKD HUF IDR ILS INR ISK JPY KES KRW MAD MXN "
    "MYR NGN NOK NZD PEN PHP PKR PLN QAR RON RSD RUB SAR SEK SGD THB TRY TWD UAH USD VND ZAR".split()
)
_NUMBER = re.compile(r"[-+−]?\(?\d[\d\s.,'’\u00a0\u202f]*\)?")


def parse_number(value: object) -> tuple[float | None, str]:
    """A JSON value -> (number or None, the unit text around it); thousands separators, decimal commas.

    "1,234.5" -> 1234.5; "1.234,5" -> 1234.5; "1 234" -> 1234; "12,5 %" -> (12.5, "%"); "$3.20" -> (3.2, "$");
    "(4.00)" -> -4.0 (accounting negative); "n/a" -> (None, "n/a").
    """
    if isinstance(value, bool) or value is None:
        return None, ""
    if isinstance(value, (int, float)):
        return (float(value) if math.isfinite(value) else None), ""
    text = str(value).strip()
    m = _NUMBER.search(text)
    if not m:
        return None, text
    unit = (text[: m.start()] + text[m.end() :]).strip()
    raw = m.group(0).strip()
    negative = raw.startswith(("-", "−")) or (raw.startswith("(") and raw.endswith(")"))
    digits = re.sub(r"[^\d.,]", "", raw)
    number = _decimal(digits)
    return (None if number is None else -number if negative else number), unit


def _decimal(s: str) -> float | None:
    """Digits with separators -> float. The last separator is decimal unless it is followed by exactly 3
    digits and another separator of the same kind came before, or the kinds differ and it is the first."""
    seps = [(i, c) for i, c in enumerate(s) if c in ".,"]
    if not seps:
        return float(s) if s else None
    last_i, last_c = seps[-1]
    tail = len(s) - last_i - 1
    kinds = {c for _, c in seps}
    if (
        len(kinds) == 1
        and (len(seps) > 1 or tail == 3)
        and all(len(part) == 3 for part in s.split(last_c)[1:])
    ):
        return float(s.replace(last_c, ""))  # "1,234,567" or "1.234" (thousands only)
    intpart = s[:last_i].replace(".", "").replace(",", "")
    try:
        return float(f"{intpart or '0'}.{s[last_i + 1 :]}")
    except ValueError:
        return None


def currency_code(value: object) -> str | None:
    """ "EUR", "eur", "€", "US$" -> an ISO 4217 code when one can be told; None otherwise."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"[A-Za-z]{3}", text):
        return text.upper()
    for symbol, code in _SYMBOLS.items():
        if symbol in text:
            return code
    return None


_MONTHS = {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}  # fmt: skip


def iso_date(value: object, *, month_first: bool = False) -> tuple[str | None, str | None]:
    """A date as printed -> (YYYY-MM-DD or None, warning or None).

    "2024-03-07", "2024/3/7", "07.03.2024", "7 March 2024", "Mar 7, 2024", "07/03/24" all -> "2024-03-07"
    (slashed dates read day first unless `month_first`, e.g. for USD receipts; an ambiguous one is reported).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    text = str(value).strip()
    m = re.match(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", text)
    if m:
        return _checked(int(m[1]), int(m[2]), int(m[3]), text)
    m = re.match(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{2,4})\b", text)
    if m:
        a, b, year = int(m[1]), int(m[3]), _year(m[4])
        if m[2] != "/" or a > 12 >= b:  # dotted and dashed dates are day first wherever they are printed
            day, month = a, b
        elif b > 12 >= a:
            month, day = a, b
        elif month_first:
            month, day = a, b
        else:
            day, month = a, b
        date, warn = _checked(year, month, day, text)
        if warn is None and m[2] == "/" and a <= 12 and b <= 12 and a != b:
            order = "month first" if (month, day) == (a, b) else "day first"
            warn = f"date {text!r} is ambiguous; read {order} as {date}"
        return date, warn
    return _named_month(text)


def _named_month(text: str) -> tuple[str | None, str | None]:
    m = re.search(r"(\d{1,2})(?:st|nd|rd|th)?\.?\s+([A-Za-z]{3,})\.?,?\s+(\d{4})", text)
    if m and m[2][:3].lower() in _MONTHS:
        return _checked(int(m[3]), _MONTHS[m[2][:3].lower()], int(m[1]), text)
    m = re.search(r"([A-Za-z]{3,})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", text)
    if m and m[1][:3].lower() in _MONTHS:
        return _checked(int(m[3]), _MONTHS[m[1][:3].lower()], int(m[2]), text)
    return None, f"date {text!r} is not a date I can read; left out"


def _year(s: str) -> int:
    y = int(s)
    return y + 2000 if len(s) == 2 else y


def _checked(year: int, month: int, day: int, text: str) -> tuple[str | None, str | None]:
    try:
        return dt.date(year, month, day).isoformat(), None
    except ValueError:
        return None, f"date {text!r} is not a calendar date; left out"

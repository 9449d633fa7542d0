"""Invoice validation: built-in rules plus the rules plugins register (``hub_register_rules``).

A rule is any object with a ``name`` and a ``check(invoice) -> Iterable[Problem]`` method; each problem
names its field path. ``validate()`` runs every rule, isolates a rule that crashes (it becomes a
problem of its own, never a crash of the hub) and returns the findings; ``ensure_valid()`` raises
``InvoiceInvalid`` when any finding is an error.

Tolerances are stated, not implied: a line's amount may differ from quantity × unit price by
``LINE_TOLERANCE`` (0.01, one minor unit — platforms round the unit price, not the amount), a line's
tax from amount × rate by 0.01, and totals from the sum of the lines by 0.01 per line (each line is
rounded on its own before summing), at most 1.00.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Protocol, runtime_checkable

from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError as StdnumError

from hub.errors import InvoiceInvalid, Problem
from hub.models import Invoice

LINE_TOLERANCE = Decimal("0.01")
TAX_TOLERANCE = Decimal("0.01")
MAX_TOTAL_TOLERANCE = Decimal("1.00")

#: The totals' tolerance by number of lines: 0.01 a line (each is rounded on its own), at most 1.00.
_TOTAL_TOLERANCE = tuple(min(MAX_TOTAL_TOLERANCE, LINE_TOLERANCE * max(1, n)) for n in range(101))

_USCC_ALPHABET = set("0123456789ABCDEFGHJKLMNPQRTUWXY")


@runtime_checkable
class Rule(Protocol):
    name: str

    def check(self, invoice: Invoice) -> Iterable[Problem]: ...


# ---------------------------------------------------------------------------------------------------
# Tax ids
# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def check_cn_tax_id(tax_id: str) -> str | None:
    """Return why ``tax_id`` is not a valid Chinese taxpayer id, or None when it is.

    18 characters: the unified social credit code (GB 32100-2015), checked by python-stdnum. stdnum
    rejects codes whose first eight characters are not digits, which GB 32100 allows for some
    registration authorities: those are accepted when the alphabet and check character are right.
    (Full-width input is normalised before this is called.) 15 and 20 characters: older tax numbers,
    format only. A personal id number (18 digits, may end in X) is accepted when its checksum holds.
    """
    if len(tax_id) == 18:
        try:
            uscc.validate(tax_id)
            return None
        except StdnumError as exc:
            if ric.is_valid(tax_id):
                return None
            if set(tax_id) - _USCC_ALPHABET:
                bad = "".join(sorted(set(tax_id) - _USCC_ALPHABET))
                return f"{tax_id!r} has characters a credit code never uses: {bad!r}"
            if tax_id[-1] != uscc.calc_check_digit(tax_id[:-1]):
                expected = uscc.calc_check_digit(tax_id[:-1])
                return f"{tax_id!r} fails the credit code check character (expected {expected!r})"
            if tax_id[:8].isdigit():  # right check character, so stdnum objected to something else
                why = getattr(exc, "message", None) or exc
                return f"{tax_id!r} is not a valid unified social credit code ({why})"
            return None
    if len(tax_id) in (15, 20) and tax_id.isalnum():
        return None
    return f"{tax_id!r} is not an 18-character credit code or a 15/20-character tax number"


# ---------------------------------------------------------------------------------------------------
# Built-in rules
# ---------------------------------------------------------------------------------------------------
class TaxIdRule:
    name = "cn_tax_id"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        if not invoice.kind.is_cn:
            return
        seller, buyer = invoice.seller.tax_id, invoice.buyer.tax_id
        if not seller:
            yield Problem("seller.tax_id", "a Chinese invoice must name the seller's tax id", rule=self.name)
        elif why := check_cn_tax_id(seller):
            yield Problem("seller.tax_id", why, rule=self.name)
        if buyer and (why := check_cn_tax_id(buyer)):
            yield Problem("buyer.tax_id", why, rule=self.name)


class NumberFormatRule:
    name = "number_format"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        number = invoice.number
        if invoice.extra.get("issue_request"):
            return  # a request to issue (an ERP row, an order): the platform gives it its number
        if invoice.kind.is_cn_digital:
            if len(number) != 20 or not number.isdigit():
                yield Problem(
                    "number", f"{number!r} is not a 20-digit digitalised e-invoice number", rule=self.name
                )
            elif int(number[:2]) != invoice.issue_date.year % 100:
                yield Problem(
                    "number",
                    f"{number!r} starts with year {number[:2]} but the invoice was issued in "
                    f"{invoice.issue_date.year}",
                    rule=self.name,
                )
        elif invoice.kind.is_cn_legacy:
            if len(number) != 8 or not number.isdigit():
                yield Problem("number", f"{number!r} is not an 8-digit legacy invoice number", rule=self.name)
            code = invoice.code or ""
            if len(code) not in (10, 12) or not code.isdigit():
                yield Problem("code", f"{code!r} is not a 10- or 12-digit invoice code", rule=self.name)
        elif not number:
            yield Problem("number", "the invoice number is empty", rule=self.name)


class ArithmeticRule:
    name = "arithmetic"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        lines = invoice.lines
        line_sum = tax_sum = Decimal(0)
        every_line_taxed = True
        for i, line in enumerate(lines):
            amount = line.amount
            line_sum += amount
            quantity, price = line.quantity, line.unit_price
            if quantity is not None and price is not None:
                expected = quantity * price
                if line.allowances or line.charges:  # usually both 0: no Decimal arithmetic for them
                    expected = expected - line.allowances + line.charges
                if abs(expected - amount) > LINE_TOLERANCE:
                    yield Problem(
                        f"lines[{i}].amount",
                        f"{amount} is not quantity × unit price = {quantity} × {price} "
                        f"= {expected.quantize(Decimal('0.01'))} (tolerance {LINE_TOLERANCE})",
                        rule=self.name,
                    )
            tax, rate = line.tax_amount, line.tax_rate
            if tax is None:
                every_line_taxed = False
                continue
            tax_sum += tax
            if rate is not None:
                expected = amount * rate
                if abs(expected - tax) > TAX_TOLERANCE:
                    yield Problem(
                        f"lines[{i}].tax_amount",
                        f"{tax} is not amount × rate = {amount} × {rate} "
                        f"= {expected.quantize(Decimal('0.01'))} (tolerance {TAX_TOLERANCE})",
                        rule=self.name,
                    )
        t = invoice.totals
        if lines:
            tolerance = _TOTAL_TOLERANCE[min(len(lines), len(_TOTAL_TOLERANCE) - 1)]
            expected_net = line_sum - t.allowances + t.charges if t.allowances or t.charges else line_sum
            if abs(expected_net - t.net) > tolerance:
                adjusted = " less allowances plus charges" if t.allowances or t.charges else ""
                yield Problem(
                    "totals.net",
                    f"{t.net} is not the sum of the lines{adjusted} = {expected_net}",
                    rule=self.name,
                )
            if every_line_taxed and not t.allowances and not t.charges and abs(tax_sum - t.tax) > tolerance:
                yield Problem(
                    "totals.tax", f"{t.tax} is not the sum of the line taxes = {tax_sum}", rule=self.name
                )
        if abs(t.net + t.tax - t.gross) > LINE_TOLERANCE:
            yield Problem("totals.gross", f"{t.gross} is not net + tax = {t.net + t.tax}", rule=self.name)
        if t.payable is not None and abs(t.gross - t.prepaid - t.payable) > LINE_TOLERANCE:
            yield Problem(
                "totals.payable",
                f"{t.payable} is not gross - prepaid = {t.gross - t.prepaid}",
                rule=self.name,
            )


class RedLetterRule:
    name = "red_letter"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        # EN 16931 credit notes and corrections carry their own signs; the red-letter rules are Chinese.
        if not invoice.kind.is_cn:
            return
        negative = invoice.totals.gross < 0
        if invoice.is_red_letter:
            if invoice.totals.gross > 0 or invoice.totals.net > 0:
                yield Problem(
                    "totals.gross", "a red-letter invoice must carry negative amounts", rule=self.name
                )
            for i, line in enumerate(invoice.lines):
                if line.amount > 0:
                    yield Problem(
                        f"lines[{i}].amount", "a red-letter line must not be positive", rule=self.name
                    )
        elif negative:
            yield Problem(
                "reverses",
                "negative amounts make this a red-letter invoice, but it names no original invoice",
                rule=self.name,
            )


_TODAY: tuple[int, date] = (-1, date.min)


def latest_today() -> date:
    """The latest "today" anywhere on earth (UTC+14), so no issuer's zone is called the future. Worked
    out once a second, not once an invoice (a clock read, a datetime and a date each time)."""
    global _TODAY
    second = int(time.time())
    if _TODAY[0] != second:
        _TODAY = (second, (datetime.fromtimestamp(second, UTC) + timedelta(hours=14)).date())
    return _TODAY[1]


class IssueDateRule:
    name = "issue_date"

    def __init__(self, today: date | None = None) -> None:
        self.today = today

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        today = self.today or latest_today()
        if invoice.issue_date > today:
            yield Problem("issue_date", f"{invoice.issue_date} is in the future", rule=self.name)


#: VAT rates in force by period (DOMAIN.md): 17/11 before 2018-05-01, 16/10 until 2019-03-31, then 13/9.
_RATE_PERIODS: tuple[tuple[date, date, frozenset[Decimal]], ...] = (
    (date(1994, 1, 1), date(2018, 4, 30), frozenset(map(Decimal, ("0.17", "0.11")))),
    (date(2018, 5, 1), date(2019, 3, 31), frozenset(map(Decimal, ("0.16", "0.10")))),
    (date(2019, 4, 1), date(9999, 12, 31), frozenset(map(Decimal, ("0.13", "0.09")))),
)
_ALWAYS = frozenset(map(Decimal, ("0", "0.06", "0.05", "0.03", "0.01", "0.015")))


@lru_cache(maxsize=4096)
def _rates_on(day: date) -> frozenset[Decimal]:
    allowed = set(_ALWAYS)
    for start, end, rates in _RATE_PERIODS:
        if start <= day <= end:
            allowed |= rates
    return frozenset(r.normalize() for r in allowed)


class CnRateRule:
    name = "cn_vat_rate"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        if not invoice.kind.is_cn:
            return
        allowed = _rates_on(invoice.issue_date)
        for i, line in enumerate(invoice.lines):
            # Equal Decimals hash alike whatever their exponent (0.130 is 0.13): no normalize needed.
            if line.tax_rate is not None and line.tax_rate not in allowed:
                yield Problem(
                    f"lines[{i}].tax_rate",
                    f"{line.tax_rate:%} was not a Chinese VAT rate on {invoice.issue_date}",
                    severity="warning",
                    rule=self.name,
                )


def builtin_rules(today: date | None = None) -> list[Rule]:
    return [
        TaxIdRule(),
        NumberFormatRule(),
        ArithmeticRule(),
        RedLetterRule(),
        IssueDateRule(today),
        CnRateRule(),
    ]


# ---------------------------------------------------------------------------------------------------
# Running rules
# ---------------------------------------------------------------------------------------------------
def validate(invoice: Invoice, rules: Sequence[Rule] | None = None) -> list[Problem]:
    """Every finding of every rule; a rule that raises becomes an error problem of its own."""
    problems: list[Problem] = []
    for rule in builtin_rules() if rules is None else rules:
        try:
            problems.extend(rule.check(invoice))
        except Exception as exc:
            problems.append(
                Problem("", f"rule {rule.name!r} crashed: {type(exc).__name__}: {exc}", rule=rule.name)
            )
    return problems


def ensure_valid(invoice: Invoice, rules: Sequence[Rule] | None = None) -> list[Problem]:
    """Raise ``InvoiceInvalid`` when any finding is an error; return the warnings otherwise."""
    problems = validate(invoice, rules)
    if any(p.severity == "error" for p in problems):
        raise InvoiceInvalid(problems, identity=invoice.identity)
    return problems

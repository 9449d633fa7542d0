"""Validation: each problem names its field path; plugins add rules through the hook."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stdnum.cn import uscc

from hub import Document, Invoice, Problem, hookimpl
from hub.errors import InvoiceInvalid
from hub.factory import invoice_data
from hub.plugins import build_plugins
from hub.validation import builtin_rules, check_cn_tax_id, ensure_valid, validate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "inbox"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def errors(data: dict[str, Any]) -> dict[str, str]:
    return {p.path: p.message for p in validate(Invoice.model_validate(data)) if p.severity == "error"}


def test_the_valid_examples_pass() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name.startswith(("23-", "24-")):
            continue
        assert errors(json.loads(path.read_text(encoding="utf-8"))) == {}, path.name


def test_credit_code_checksum_is_checked_by_stdnum_with_the_two_gaps() -> None:
    good = "91310115MA1K4LQ2XN"
    assert uscc.is_valid(good)
    assert check_cn_tax_id(good) is None
    assert "check character" in (check_cn_tax_id(good[:-1] + "0") or "")
    # Gap 1: full-width input — the model normalises it before the check.
    inv = Invoice.model_validate(
        {
            **example("01-25322000000000000001.json"),
            "seller": {"name": "S", "tax_id": "９１３１０１１５ＭＡ１Ｋ４ＬＱ２ＸＮ"},
        }
    )
    assert inv.seller.tax_id == good
    # Gap 2: codes starting with letters (allowed by GB 32100 for some authorities) pass when the check
    # character is right, although stdnum's format check refuses them.
    body = "A1310115MA1K4LQ2X"
    letter_first = body + uscc.calc_check_digit(body)
    assert not uscc.is_valid(letter_first)
    assert check_cn_tax_id(letter_first) is None
    assert check_cn_tax_id(body + "0") is not None
    # Older 15- and 20-character numbers and personal ids are accepted.
    assert check_cn_tax_id("310115123456789") is None
    assert check_cn_tax_id("11010519491231002X") is None
    assert "characters a credit code never uses" in (check_cn_tax_id("91310115MA1K4LQ2XI") or "")


def test_bad_examples_name_their_field() -> None:
    assert "seller.tax_id" in errors(example("23-bad-tax-id.json"))
    assert "totals.gross" in errors(example("24-wrong-totals.json"))


def test_number_formats_per_kind() -> None:
    data = example("01-25322000000000000001.json")
    assert "number" in errors({**data, "number": "2532200000000000000"})
    assert "start" in errors({**data, "number": "24322000000000000001"})["number"]
    legacy = example("19-legacy-3200251130-04123456.json")
    assert errors(legacy) == {}
    assert set(errors({**legacy, "code": "123"})) == {"code"}
    assert set(errors({**legacy, "number": "4123456"})) == {"number"}


def test_line_arithmetic_within_the_stated_tolerance() -> None:
    data = example("01-25322000000000000001.json")
    line = data["lines"][0]
    off_by_a_cent = {**line, "amount": str(float(line["amount"]) + 0.01)}
    assert "lines[0].amount" not in errors({**data, "lines": [off_by_a_cent, *data["lines"][1:]]})
    off_by_a_yuan = {**line, "amount": f"{float(line['amount']) + 1:.2f}"}
    found = errors({**data, "lines": [off_by_a_yuan, *data["lines"][1:]]})
    assert "quantity × unit price" in found["lines[0].amount"]
    bad_tax = {**line, "tax_amount": "0.00"}
    assert "amount × rate" in errors({**data, "lines": [bad_tax, *data["lines"][1:]]})["lines[0].tax_amount"]


def test_red_letter_rules() -> None:
    red = example("20-red-letter-of-03.json")
    assert errors(red) == {}
    assert "totals.gross" in errors(
        {**red, "totals": {"net": "1", "tax": "0", "gross": "1"}, "lines": [{"name": "x", "amount": "1"}]}
    )
    unnamed = {k: v for k, v in red.items() if k != "reverses"}
    assert "names no original" in errors(unnamed)["reverses"]


def test_issue_date_not_in_the_future() -> None:
    data = example("01-25322000000000000001.json")
    future = (date.today() + timedelta(days=3)).isoformat()
    inv = Invoice.model_validate({**data, "issue_date": future, "number": future[2:4] + data["number"][2:]})
    assert "issue_date" in {p.path for p in validate(inv)}


def test_rates_are_checked_against_the_issue_date() -> None:
    data = example("01-25322000000000000001.json")
    line = {**data["lines"][0], "tax_rate": "0.17"}
    inv = Invoice.model_validate({**data, "lines": [line]})
    found = [p for p in validate(inv) if p.path == "lines[0].tax_rate"]
    assert found and found[0].severity == "warning"


class NoRoundAmounts:
    name = "no_round_amounts"

    def check(self, invoice: Invoice) -> Iterable[Problem]:
        if invoice.totals.gross % 1000 == 0:
            yield Problem(
                "totals.gross", "round amounts need a second look", severity="error", rule=self.name
            )


class RulesPlugin:
    @hookimpl
    def hub_register_rules(self) -> list[Any]:
        return [NoRoundAmounts()]


def test_hook_hub_register_rules_adds_a_rule() -> None:
    plugins = build_plugins(extra=[("round-amounts", RulesPlugin())])
    assert [r.name for r in plugins.rules] == ["no_round_amounts"]
    data = example("01-25322000000000000001.json")
    data = {
        **data,
        "lines": [{"name": "x", "amount": "1000"}],
        "totals": {"net": "1000", "tax": "0", "gross": "1000"},
    }
    with pytest.raises(InvoiceInvalid) as caught:
        ensure_valid(Invoice.model_validate(data), [*builtin_rules(), *plugins.rules])
    assert caught.value.problems[0].path == "totals.gross"


def test_a_crashing_rule_is_a_problem_not_a_crash() -> None:
    class Broken:
        name = "broken"

        def check(self, invoice: Invoice) -> Iterable[Problem]:
            raise ZeroDivisionError("boom")

    problems = validate(Invoice.model_validate(example("01-25322000000000000001.json")), [Broken()])
    assert problems[0].rule == "broken" and "ZeroDivisionError" in problems[0].message


@pytest.mark.parametrize(
    ("field", "written", "read"),
    [
        ("amount", "214.02", "214.02"),
        ("amount", " 214.02 ", "214.02"),
        ("amount", "1,214.02", "1214.02"),
        ("amount", "￥214.02", "214.02"),
        ("amount", "２１４.０２", "214.02"),
        ("tax_rate", "0.13", "0.13"),
        ("tax_rate", "0.5%", "0.005"),
        ("tax_rate", "13%", "0.13"),
        ("tax_rate", "13", "0.13"),
    ],
)
def test_amounts_and_rates_are_read_in_the_forms_sources_write(field: str, written: str, read: str) -> None:
    line = {"name": " 技术服务费 ", "amount": "214.02", field: written}
    invoice = Invoice.model_validate({**_minimal(), "lines": [line]})
    assert invoice.lines[0].name == "技术服务费"
    assert str(getattr(invoice.lines[0], field).normalize()) == str(Decimal(read).normalize())


@pytest.mark.parametrize(
    ("field", "written", "message"),
    [
        ("amount", "12.3.4", "is not a number"),
        ("amount", "15%", "is a percentage, not an amount"),
        ("tax_rate", "0.1.3", "is not a tax rate"),
    ],
)
def test_unreadable_amounts_and_rates_name_the_field(field: str, written: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Invoice.model_validate({**_minimal(), "lines": [{"name": "x", "amount": "1", field: written}]})
    assert f"lines.0.{field}" in str(caught.value)


@pytest.mark.parametrize(
    "written", ["2026-02-28", "20260228", "2026/02/28", "2026年02月28日", "2026-02-28T10:00:00+08:00"]
)
def test_issue_dates_are_read_in_the_forms_sources_write(written: str) -> None:
    assert Invoice.model_validate({**_minimal(), "issue_date": written}).issue_date == date(2026, 2, 28)


def test_an_impossible_issue_date_names_the_field() -> None:
    with pytest.raises(ValueError, match="'2026-02-30' is not a date this hub can read") as caught:
        Invoice.model_validate({**_minimal(), "issue_date": "2026-02-30"})
    assert "issue_date" in str(caught.value)


def _minimal() -> dict[str, Any]:
    """A valid invoice from the project's own factory, its lines left to each test."""
    return {**invoice_data(1, year=2026), "lines": []}


def _json_parser() -> Any:
    return next(p for p in build_plugins().parsers if p.name == "json")


def test_json_amounts_as_numbers_are_read_exactly() -> None:
    """Most documents are read by pydantic-core in one pass (amounts as strings); amounts written as
    JSON numbers take the exact path (never through a float), and both give the same invoice."""
    data = invoice_data(1)
    as_strings = json.dumps(data, ensure_ascii=False).encode()
    numeric = re.sub(
        r'"(quantity|unit_price|amount|tax_amount|net|tax|gross)": "(-?[0-9.]+)"',
        r'"\1": \2',
        as_strings.decode(),
    )
    assert numeric.count('": "') < as_strings.decode().count('": "')  # some amounts are numbers now
    parser = _json_parser()
    [from_strings] = parser.parse(Document(content=as_strings, media_type="application/json")).invoices
    [from_numbers] = parser.parse(Document(content=numeric.encode(), media_type="application/json")).invoices
    assert from_numbers == from_strings
    assert from_strings.totals.gross == Decimal(data["totals"]["gross"])

    # Digits a float cannot hold survive, and 0.1 stays 0.1.
    data["lines"][0]["unit_price"] = "__PRICE__"
    data["lines"][1]["quantity"] = "__QTY__"
    text = json.dumps(data).replace('"__PRICE__"', "12345678901234567890.123456789")
    text = text.replace('"__QTY__"', "0.1")
    [precise] = parser.parse(Document(content=text.encode(), media_type="application/json")).invoices
    assert precise.lines[0].unit_price == Decimal("12345678901234567890.123456789")
    assert precise.lines[1].quantity == Decimal("0.1")


def test_json_errors_name_the_field_on_either_path() -> None:
    data = invoice_data(2)
    data["totals"]["net"] = "twelve"
    with pytest.raises(InvoiceInvalid) as caught:
        _json_parser().parse(Document(content=json.dumps(data).encode(), media_type="application/json"))
    assert "totals.net" in {p.path for p in caught.value.problems}

"""Canonical form and content hash: formatting never changes the hash, business content always does."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.cn import uscc

from hub.canonical import canonical_bytes, canonical_dict, content_hash
from hub.models import Invoice, InvoiceKind, InvoiceStatus, read_date

FULLWIDTH = str.maketrans(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "０１２３４５６７８９ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺ",
)
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


@st.composite
def credit_codes(draw: st.DrawFn) -> str:
    body = (
        "91"
        + draw(st.text("0123456789", min_size=6, max_size=6))
        + draw(st.text(USCC_ALPHABET, min_size=9, max_size=9))
    )
    return body + uscc.calc_check_digit(body)


money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2, allow_nan=False)
names = st.text(st.characters(whitelist_categories=("Lo", "Lu", "Ll")), min_size=2, max_size=12)


@st.composite
def invoices(draw: st.DrawFn) -> dict[str, Any]:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        amount = draw(money)
        rate = draw(st.sampled_from(["0.13", "0.09", "0.06", "0.03"]))
        lines.append(
            {
                "name": "*类别*" + draw(names),
                "unit": draw(st.sampled_from(["个", "台", "次", None])),
                "quantity": "1",
                "unit_price": str(amount),
                "amount": str(amount),
                "tax_rate": rate,
                "tax_amount": str((amount * Decimal(rate)).quantize(Decimal("0.01"))),
            }
        )
    net = sum(Decimal(line["amount"]) for line in lines)
    tax = sum(Decimal(line["tax_amount"]) for line in lines)
    year = draw(st.integers(2020, 2025))
    return {
        "kind": draw(st.sampled_from(["cn.digital.special", "cn.digital.ordinary"])),
        "number": f"{year % 100:02d}" + draw(st.text("0123456789", min_size=18, max_size=18)),
        "issue_date": date(year, draw(st.integers(1, 12)), draw(st.integers(1, 28))).isoformat(),
        "currency": "CNY",
        "seller": {
            "name": draw(names) + "有限公司",
            "tax_id": draw(credit_codes()),
            "address": "上海市 浦东新区",
        },
        "buyer": {"name": draw(names) + "有限公司", "tax_id": draw(credit_codes())},
        "lines": lines,
        "totals": {"net": str(net), "tax": str(tax), "gross": str(net + tax)},
    }


def reformat(data: dict[str, Any], how: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if how == "fullwidth":
        out["number"] = out["number"].translate(FULLWIDTH)
        out["seller"]["tax_id"] = out["seller"]["tax_id"].translate(FULLWIDTH)
        out["buyer"]["name"] = out["buyer"]["name"].translate(FULLWIDTH)
    elif how == "whitespace":
        out["seller"]["name"] = "  " + out["seller"]["name"].replace("有限", "有限\u3000 ") + "\t"
        out["seller"]["address"] = "上海市\u200b   浦东新区 \n"
        out["buyer"]["tax_id"] = " " + out["buyer"]["tax_id"][:6] + " - " + out["buyer"]["tax_id"][6:]
    elif how == "trailing_zeros":
        for line in out["lines"]:
            line["amount"] = str(Decimal(line["amount"]).quantize(Decimal("0.0000")))
            line["quantity"] = "1.00000000"
        out["totals"]["net"] = str(Decimal(out["totals"]["net"]) + Decimal("0.000"))
    elif how == "lowercase":
        out["seller"]["tax_id"] = out["seller"]["tax_id"].lower()
        out["buyer"]["tax_id"] = out["buyer"]["tax_id"].lower()
    elif how == "date":
        d = date.fromisoformat(out["issue_date"])
        out["issue_date"] = f"{d.year}年{d.month:02d}月{d.day:02d}日"
    elif how == "date_compact":
        out["issue_date"] = out["issue_date"].replace("-", "")
    elif how == "date_time":
        out["issue_date"] = out["issue_date"] + " 13:02:50"
    elif how == "status_and_extra":
        out["status"] = "red_lettered"
        out["extra"] = {"payment_means": "card **** 1234", "remark": "paid"}
    return out


@settings(max_examples=60, deadline=None)
@given(
    invoices(),
    st.sampled_from(
        [
            "fullwidth",
            "whitespace",
            "trailing_zeros",
            "lowercase",
            "date",
            "date_compact",
            "date_time",
            "status_and_extra",
        ]
    ),
)
def test_formatting_only_differences_give_the_same_hash(data: dict[str, Any], how: str) -> None:
    original = Invoice.model_validate(data)
    variant = Invoice.model_validate(reformat(data, how))
    assert content_hash(variant) == content_hash(original), how
    assert variant.identity == original.identity


def mutate(data: dict[str, Any], what: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if what == "number":
        out["number"] = out["number"][:-1] + str((int(out["number"][-1]) + 1) % 10)
    elif what == "seller_tax_id":
        out["seller"]["tax_id"] = "91310115MA1K4LQ2XN"
    elif what == "buyer_name":
        out["buyer"]["name"] += "分公司"
    elif what == "line_amount":
        out["lines"][0]["amount"] = str(Decimal(out["lines"][0]["amount"]) + Decimal("0.01"))
    elif what == "line_quantity":
        out["lines"][0]["quantity"] = "2"
    elif what == "tax_rate":
        out["lines"][0]["tax_rate"] = "0.01"
    elif what == "gross":
        out["totals"]["gross"] = str(Decimal(out["totals"]["gross"]) + Decimal("1"))
    elif what == "issue_date":
        d = date.fromisoformat(out["issue_date"])
        out["issue_date"] = d.replace(day=d.day % 28 + 1).isoformat()
    elif what == "currency":
        out["currency"] = "USD"
    elif what == "extra_line":
        out["lines"].append(dict(out["lines"][0]))
    elif what == "line_order":
        out["lines"] = [*out["lines"], {**out["lines"][0], "name": "*类别*另一项"}]
        out["lines"].reverse()
    elif what == "kind":
        out["kind"] = "cn.digital.ordinary" if out["kind"] == "cn.digital.special" else "cn.digital.special"
    elif what == "address":
        out["seller"]["address"] = "北京市朝阳区"
    return out


@settings(max_examples=60, deadline=None)
@given(
    invoices(),
    st.sampled_from(
        [
            "number",
            "seller_tax_id",
            "buyer_name",
            "line_amount",
            "line_quantity",
            "tax_rate",
            "gross",
            "issue_date",
            "currency",
            "extra_line",
            "line_order",
            "kind",
            "address",
        ]
    ),
)
def test_any_business_change_gives_another_hash(data: dict[str, Any], what: str) -> None:
    original = Invoice.model_validate(data)
    changed = Invoice.model_validate(mutate(data, what))
    assert content_hash(changed) != content_hash(original), what


GOLDEN = json.loads(
    (Path(__file__).parent / "fixtures" / "canonical_golden.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_content_hashes_stay_what_ledgers_already_hold(case: str) -> None:
    """Ledgers store these hashes: a change of canonical form must bump ``CANONICAL_VERSION``, never
    move a hash silently. The cases cover every field the canonical form reads (line allowances and
    charges, totals with prepaid and payable, red-letter, legacy code, CJK gaps, exponents, -0)."""
    invoice = Invoice.model_validate(GOLDEN[case]["invoice"])
    assert content_hash(invoice) == GOLDEN[case]["content_hash"]


@settings(max_examples=60, deadline=None)
@given(invoices())
def test_canonical_bytes_are_sorted_compact_json(data: dict[str, Any]) -> None:
    """The canonical bytes are orjson's compact form with every object's keys sorted."""
    raw = canonical_bytes(Invoice.model_validate(data))
    assert raw == orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)


def test_canonical_numbers_are_plain_strings_without_trailing_zeros() -> None:
    data = {
        "kind": "invoice",
        "number": "F1",
        "country": "FR",
        "issue_date": "2026-01-31",
        "currency": "EUR",
        "seller": {"name": "S", "tax_id": "FR 05 987 654 321"},
        "buyer": {"name": "B"},
        "lines": [{"name": "x", "amount": "100.00", "quantity": "1E+2", "unit_price": "1"}],
        "totals": {"net": "100", "tax": "0.00", "gross": "100.0"},
    }
    canon = canonical_dict(Invoice.model_validate(data))
    assert canon["lines"][0]["amount"] == "100"
    assert canon["lines"][0]["quantity"] == "100"
    assert canon["totals"]["tax"] == "0"
    assert canon["seller"]["tax_id"] == "FR05987654321"


def test_identity_keys_follow_the_contract() -> None:
    base = {
        "issue_date": "2025-10-08",
        "seller": {"name": "S", "tax_id": "DE123456789"},
        "buyer": {"name": "B"},
        "totals": {"net": "1", "tax": "0", "gross": "1"},
    }
    digital = Invoice.model_validate({**base, "kind": "cn.digital.special", "number": "25312000000000000001"})
    legacy = Invoice.model_validate(
        {**base, "kind": "cn.legacy.ordinary", "code": "3200251130", "number": "04123456"}
    )
    inv = Invoice.model_validate({**base, "kind": "invoice", "country": "DE", "number": "471102"})
    crn = Invoice.model_validate({**base, "kind": "credit_note", "country": "DE", "number": "471102"})
    assert digital.identity == "CN:25312000000000000001"
    assert legacy.identity == "CN:3200251130:04123456"
    assert inv.identity == "DE:DE123456789:INV:471102"
    assert crn.identity == "DE:DE123456789:CRN:471102"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02-28", date(2026, 2, 28)),
        ("20180305", date(2018, 3, 5)),
        ("2026年02月28日", date(2026, 2, 28)),
        ("2025-12-29 13:02:50", date(2025, 12, 29)),
        ("2025-12-29T13:02:50+08:00", date(2025, 12, 29)),
        # 07:00 on 2026-03-01 in Shanghai is 23:00 on 2026-02-28 in UTC: the issuer's day counts.
        (int(datetime.fromisoformat("2026-03-01T07:00:00+08:00").timestamp() * 1000), date(2026, 3, 1)),
    ],
)
def test_dates_are_read_in_the_forms_sources_write(text: Any, expected: date) -> None:
    assert read_date(text) == expected


def test_money_refuses_floats_and_rates_take_every_form() -> None:
    base = {
        "kind": "invoice",
        "number": "1",
        "issue_date": "2026-01-01",
        "seller": {"name": "S"},
        "buyer": {"name": "B"},
        "totals": {"net": "1", "tax": "0", "gross": "1"},
    }
    with pytest.raises(ValueError, match="float"):
        Invoice.model_validate({**base, "totals": {"net": 1.1, "tax": "0", "gross": "1.1"}})
    for rate in ("0.13", "13%", "13", Decimal("0.13")):
        inv = Invoice.model_validate({**base, "lines": [{"name": "x", "amount": "1", "tax_rate": rate}]})
        assert inv.lines[0].tax_rate == Decimal("0.13")
    exempt = Invoice.model_validate(
        {**base, "lines": [{"name": "x", "amount": "1", "tax_rate": "免税", "tax_category": "exempt"}]}
    )
    assert exempt.lines[0].tax_rate is None


def test_status_is_not_content() -> None:
    data = {
        "kind": "cn.legacy.ordinary",
        "code": "3200251130",
        "number": "04123456",
        "issue_date": "2025-01-02",
        "seller": {"name": "S", "tax_id": "91310115MA1K4LQ2XN"},
        "buyer": {"name": "B"},
        "totals": {"net": "1", "tax": "0", "gross": "1"},
    }
    issued = Invoice.model_validate(data)
    void = Invoice.model_validate({**data, "status": "void"})
    assert void.status is InvoiceStatus.VOID
    assert content_hash(void) == content_hash(issued)
    assert issued.kind is InvoiceKind.CN_LEGACY_ORDINARY

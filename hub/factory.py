"""Synthetic, valid invoices for tests, benchmarks and demos (``hub bench`` uses them).

Deterministic for a given index: invoice ``i`` always has the same content, so a second run of the
same set is a set of duplicates, and ``amend(i)`` is an amendment of invoice ``i``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from stdnum.cn import uscc

from hub.models import Invoice


def _code(body17: str) -> str:
    return body17 + uscc.calc_check_digit(body17)


SELLERS = [_code(f"9131011{i}MA1K4LQ2X") for i in range(10)]
BUYERS = [_code(f"9133010{i}MA2H0B3C4") for i in range(10)]
_RATES = ("0.13", "0.09", "0.06")


def invoice_number(i: int, year: int = 2025) -> str:
    """The 20-digit number of invoice ``i``."""
    return f"{year % 100:02d}31{2000000 + i // 10**9:07d}{i % 10**9:09d}"[:20].ljust(20, "0")


def invoice_data(i: int, *, lines: int = 2, year: int = 2025) -> dict[str, Any]:
    """Invoice number ``i`` as the hub's JSON form (a 20-digit digitalised e-invoice)."""
    out_lines = []
    for j in range(lines):
        price = Decimal(100 + (i * 7 + j * 13) % 9000) + Decimal((i + j) % 100) / 100
        qty = Decimal(1 + (i + j) % 5)
        amount = (price * qty).quantize(Decimal("0.01"))
        rate = _RATES[(i + j) % 3]
        out_lines.append(
            {
                "name": f"*信息技术服务*技术服务费{j + 1}",
                "unit": "项",
                "quantity": str(qty),
                "unit_price": str(price),
                "amount": str(amount),
                "tax_rate": rate,
                "tax_amount": str((amount * Decimal(rate)).quantize(Decimal("0.01"))),
            }
        )
    net = sum(Decimal(x["amount"]) for x in out_lines)
    tax = sum(Decimal(x["tax_amount"]) for x in out_lines)
    return {
        "kind": "cn.digital.special" if i % 2 else "cn.digital.ordinary",
        "number": invoice_number(i, year),
        "issue_date": f"{year}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "currency": "CNY",
        "seller": {
            "name": f"上海示例科技有限公司{i % 10}",
            "tax_id": SELLERS[i % 10],
            "address": "上海市浦东新区张江路88号",
            "bank_account": "6222021001000000000",
        },
        "buyer": {"name": f"杭州示例贸易有限公司{i % 7}", "tax_id": BUYERS[i % 10]},
        "lines": out_lines,
        "totals": {"net": str(net), "tax": str(tax), "gross": str(net + tax)},
    }


def invoice_json(i: int, **kwargs: Any) -> bytes:
    return orjson.dumps(invoice_data(i, **kwargs))


def invoice(i: int, **kwargs: Any) -> Invoice:
    return Invoice.model_validate(invoice_data(i, **kwargs))

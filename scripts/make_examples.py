"""Write examples/inbox: the invoices the default hub.yaml reads (run: python scripts/make_examples.py).

Kept in the repo so a reader can see how each example was made: 20 distinct valid invoices (Chinese
digitalised special and ordinary, a legacy VAT invoice, a red-letter reversal), the first one again
with other formatting (full-width digits, lower-case tax id, 100 vs 100.00, a Chinese date), an
amendment of the second, one with a bad tax-id checksum, one whose totals are wrong, and a file that
is not an invoice at all.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from stdnum.cn import uscc

OUT = Path(__file__).resolve().parent.parent / "examples" / "inbox"


def credit_code(body17: str) -> str:
    return body17 + uscc.calc_check_digit(body17)


SELLERS = [
    ("上海云帆信息技术有限公司", credit_code("91310115MA1K4LQ2X"), "上海市浦东新区张江路88号 021-50801234"),
    ("江苏长江机械制造有限公司", credit_code("91320200MA1MXK8P3"), "无锡市新吴区长江路7号 0510-81234567"),
    ("北京清泉餐饮管理有限公司", credit_code("91110105MA01ABCD1"), "北京市朝阳区建国路1号 010-65001234"),
    ("广州南方物流有限公司", credit_code("91440101MA5CXYW12"), "广州市天河区体育西路1号 020-38001234"),
]
BUYER = ("杭州明远贸易有限公司", credit_code("91330106MA2H0B3C4"), "杭州市西湖区文三路90号 0571-88001234")

ITEMS = [
    ("*信息技术服务*软件维护服务", "年度", "项", "1", "12000.00", "0.06"),
    ("*机械设备*数控车床配件", "CK6140", "套", "4", "2500.00", "0.13"),
    ("*餐饮服务*餐费", None, "次", "1", "856.60", "0.06"),
    ("*物流辅助服务*国内货物运输代理", None, "批", "2", "1500.00", "0.06"),
    ("*计算机外部设备*激光打印机", "M7400", "台", "3", "1299.00", "0.13"),
    ("*农产品*大米", "5kg", "袋", "20", "45.00", "0.09"),
]


def money(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


def invoice(i: int, seller: int, items: list[int], *, day: int = 8, kind: str = "cn.digital.special") -> dict:
    name, tax_id, addr = SELLERS[seller]
    lines = []
    for j in items:
        item, spec, unit, qty, price, rate = ITEMS[j]
        amount = Decimal(qty) * Decimal(price)
        tax = (amount * Decimal(rate)).quantize(Decimal("0.01"))
        lines.append(
            {
                "name": item,
                "spec": spec,
                "unit": unit,
                "quantity": qty,
                "unit_price": price,
                "amount": money(amount),
                "tax_rate": rate,
                "tax_amount": money(tax),
            }
        )
    net = sum(Decimal(line["amount"]) for line in lines)
    tax = sum(Decimal(line["tax_amount"]) for line in lines)
    province = {0: "31", 1: "32", 2: "11", 3: "44"}[seller]
    return {
        "kind": kind,
        "number": f"25{province}2000000{i:09d}",
        "issue_date": f"2025-10-{day:02d}",
        "currency": "CNY",
        "seller": {
            "name": name,
            "tax_id": tax_id,
            "address": addr,
            "bank_name": "招商银行上海分行",
            "bank_account": "121909876510201",
        },
        "buyer": {"name": BUYER[0], "tax_id": BUYER[1], "address": BUYER[2]},
        "lines": lines,
        "totals": {"net": money(net), "tax": money(tax), "gross": money(net + tax)},
        "extra": {"drawer": "王芳"},
    }


def write(name: str, data: object) -> None:
    (OUT / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    invoices = []
    for i in range(1, 19):
        inv = invoice(
            i,
            seller=i % 4,
            items=[i % 6, (i + 2) % 6] if i % 3 else [i % 6],
            day=1 + i,
            kind="cn.digital.special" if i % 2 else "cn.digital.ordinary",
        )
        invoices.append(inv)
        write(f"{i:02d}-{inv['number']}.json", inv)

    legacy = invoice(19, seller=1, items=[1], kind="cn.legacy.special", day=20)
    legacy["code"] = "3200251130"
    legacy["number"] = "04123456"
    write("19-legacy-3200251130-04123456.json", legacy)

    # A red-letter invoice reversing invoice 3 in full (negative amounts, names its original).
    original = invoices[2]
    red = json.loads(json.dumps(original))
    red["number"] = "25112000000900000001"
    red["issue_date"] = "2025-10-25"
    red["reverses"] = original["number"]
    red["reversal_reason"] = "02"
    for line in red["lines"]:
        line["quantity"] = "-" + line["quantity"]
        line["amount"] = "-" + line["amount"]
        line["tax_amount"] = "-" + line["tax_amount"]
    red["totals"] = {k: "-" + v for k, v in original["totals"].items()}
    write("20-red-letter-of-03.json", red)

    # The same invoice as 01, written differently: full-width digits, lower-case tax ids, 100 vs 100.00,
    # a Chinese date and extra whitespace. Same content hash: counted as a duplicate.
    dup = json.loads(json.dumps(invoices[0]))
    fw = str.maketrans("0123456789", "０１２３４５６７８９")
    dup["number"] = dup["number"].translate(fw)
    dup["seller"]["tax_id"] = dup["seller"]["tax_id"].lower()
    dup["buyer"]["tax_id"] = " ".join([dup["buyer"]["tax_id"][:9], dup["buyer"]["tax_id"][9:]]).lower()
    dup["seller"]["name"] = "  " + dup["seller"]["name"] + "\u3000"
    d = dup["issue_date"].split("-")
    dup["issue_date"] = f"{d[0]}年{d[1]}月{d[2]}日"
    for line in dup["lines"]:
        line["amount"] = line["amount"].removesuffix(".00")
    dup["totals"]["net"] = dup["totals"]["net"].removesuffix(".00")
    write("21-duplicate-of-01-reformatted.json", dup)

    # An amendment of 02: same number, the buyer's address corrected. Same identity, other content.
    amend = json.loads(json.dumps(invoices[1]))
    amend["buyer"]["address"] = "杭州市西湖区文三路90号东方通信大厦12楼 0571-88001234"
    write("22-amendment-of-02.json", amend)

    # A bad tax id: the check character of the seller's credit code is wrong.
    bad_id = invoice(23, seller=0, items=[4], day=12)
    good = bad_id["seller"]["tax_id"]
    bad_id["seller"]["tax_id"] = good[:-1] + ("0" if good[-1] != "0" else "1")
    write("23-bad-tax-id.json", bad_id)

    # Wrong totals: the gross does not equal net + tax.
    wrong = invoice(24, seller=2, items=[2, 5], day=14)
    wrong["totals"]["gross"] = money(Decimal(wrong["totals"]["gross"]) + Decimal("100"))
    write("24-wrong-totals.json", wrong)

    (OUT / "25-meeting-notes.txt").write_text(
        "Notes from the supplier call: send the October statement by Friday.\n", encoding="utf-8"
    )
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()

"""Inventory import files: every malformed row reported with its line, nothing half-read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.auth.inventory import (
    InventoryError,
    ParsedInventory,
    parse_inventory,
    parse_inventory_csv,
    parse_inventory_json,
)

REPO = Path(__file__).resolve().parents[3]
HEADER = (
    "service_id,service_name,ips,account_id,authorized_contacts,type,os_family,ipkvm,"
    "rescue,ssh_port,ssh_host_key,datacenter"
)
GOOD = "SRV-1,web-01,203.0.113.10 2001:db8::10,ACC-1,ACC-2 ACC-3,dedicated,linux,true,yes,22,,MIL-1"


def csv_of(*rows: str) -> str:
    return "\n".join((HEADER, *rows)) + "\n"


def errors_of(parsed: ParsedInventory) -> list[tuple[int, str]]:
    return [(e.line, e.field) for e in parsed.errors]


def test_a_valid_csv_row_becomes_a_record():
    parsed = parse_inventory_csv(csv_of(GOOD))
    assert parsed.ok
    (record,) = parsed.records
    assert [str(ip) for ip in record.ips] == ["203.0.113.10", "2001:db8::10"]
    assert record.authorized_contacts == ("ACC-2", "ACC-3")
    assert (record.ipkvm, record.rescue, record.ssh_port, record.ssh_host_key) == (
        True,
        True,
        22,
        None,
    )


def test_optional_cells_may_be_empty_and_take_their_defaults():
    parsed = parse_inventory_csv(csv_of("SRV-1,web-01,203.0.113.10,ACC-1,,vps,windows,no,0,,,AMS"))
    assert parsed.ok, parsed.errors
    (record,) = parsed.records
    assert record.authorized_contacts == ()
    assert record.ssh_port == 22
    assert (record.ipkvm, record.rescue) == (False, False)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("SRV-2,web-02,203.0.113.300,ACC-1,,vps,linux,true,true,22,,MIL-1", "ips[0]"),
        ("SRV-2,web-02,203.0.113.12 nope,ACC-1,,vps,linux,true,true,22,,MIL-1", "ips[1]"),
        ("SRV-2,web-02,,ACC-1,,vps,linux,true,true,22,,MIL-1", "ips"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,cloud,linux,true,true,22,,MIL-1", "type"),
        ("SRV-2,web-02,203.0.113.12,,,vps,linux,true,true,22,,MIL-1", "account_id"),
        ("SRV-2,web-02,203.0.113.12,ACC 1,,vps,linux,true,true,22,,MIL-1", "account_id"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,vps,linux,maybe,true,22,,MIL-1", "ipkvm"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,vps,bsd,true,true,22,,MIL-1", "os_family"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,vps,linux,true,true,70000,,MIL-1", "ssh_port"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,vps,linux,true,true,22,not a key,MIL-1", "ssh_host_key"),
        (
            "SRV-2,web-02,203.0.113.12,ACC-1,ACC-2 bad/contact,vps,linux,true,true,22,,MIL-1",
            "authorized_contacts[1]",
        ),
        ("SRV-2,web-02,203.0.113.12 203.0.113.12,ACC-1,,vps,linux,true,true,22,,MIL-1", "ips"),
        ("SRV-2,web-02,203.0.113.12,ACC-1,,vps,linux,true,true,22,,MIL-1,extra", "$"),
    ],
)
def test_each_malformed_row_is_reported_with_its_line_and_field(row: str, field: str):
    parsed = parse_inventory_csv(
        csv_of(
            GOOD,
            row,
            GOOD.replace("SRV-1", "SRV-3").replace("203.0.113.10 2001:db8::10", "203.0.113.30"),
        )
    )
    assert errors_of(parsed) == [(3, field)], parsed.errors
    assert [r.service_id for r in parsed.records] == ["SRV-1", "SRV-3"]


def test_every_bad_row_is_reported_not_just_the_first():
    parsed = parse_inventory_csv(
        csv_of(
            GOOD,
            "SRV-2,web-02,10.0.0.999,ACC-1,,vps,linux,true,true,22,,MIL-1",
            "",  # a blank line still counts for the line numbers after it
            "SRV-3,web-03,10.0.0.3,,,vps,linux,perhaps,true,22,,MIL-1",
        )
    )
    assert errors_of(parsed) == [(3, "ips[0]"), (5, "account_id"), (5, "ipkvm")]


def test_a_service_id_repeated_within_the_file_names_the_first_line():
    parsed = parse_inventory_csv(
        csv_of(GOOD, GOOD.replace("203.0.113.10 2001:db8::10", "203.0.113.99"))
    )
    assert errors_of(parsed) == [(3, "service_id")]
    assert "already on line 2" in parsed.errors[0].message


def test_an_address_on_two_servers_in_the_file_is_refused():
    parsed = parse_inventory_csv(
        csv_of(
            GOOD,
            GOOD.replace("SRV-1", "SRV-2").replace("203.0.113.10 2001:db8::10", "2001:DB8:0::10"),
        )
    )
    assert errors_of(parsed) == [(3, "ips")]
    assert "2001:db8::10 is already the address of SRV-1 on line 2" in parsed.errors[0].message


def test_a_quoted_cell_spanning_lines_keeps_later_line_numbers_right():
    parsed = parse_inventory_csv(
        csv_of(
            'SRV-1,"web-01",203.0.113.10,ACC-1,"ACC-2\nACC-3",vps,linux,true,true,22,,MIL-1',
            "SRV-2,web-02,203.0.113.12,ACC-1,,vps,linux,nah,true,22,,MIL-1",
        )
    )
    assert errors_of(parsed) == [(4, "ipkvm")]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (HEADER.replace("account_id", "acount_id"), "unknown column(s) 'acount_id'"),
        (HEADER.replace(",datacenter", ""), "missing required column(s) datacenter"),
        (HEADER + ",ipkvm", "repeated column(s) ipkvm"),
    ],
)
def test_header_problems_stop_the_file_at_line_one(header: str, message: str):
    parsed = parse_inventory_csv(f"{header}\n{GOOD}\n")
    assert parsed.records == ()
    assert parsed.errors
    assert parsed.errors[0].line == 1
    assert any(message in e.message for e in parsed.errors)


def test_an_empty_file_has_no_header():
    assert errors_of(parse_inventory_csv("")) == [(1, "$")]


def _json_rows(*rows: dict[str, object]) -> str:
    # One key per line, as editors and `json.dumps(indent=2)` lay files out.
    return json.dumps(list(rows), indent=2)


JSON_GOOD: dict[str, object] = {
    "service_id": "SRV-1",
    "service_name": "web-01",
    "ips": ["203.0.113.10"],
    "account_id": "ACC-1",
    "authorized_contacts": [],
    "type": "vps",
    "os_family": "linux",
    "ipkvm": False,
    "rescue": True,
    "ssh_port": 2222,
    "ssh_host_key": None,
    "datacenter": "MIL-1",
}


def test_a_valid_json_file_becomes_records():
    parsed = parse_inventory_json(
        _json_rows(
            JSON_GOOD, {**JSON_GOOD, "service_id": "SRV-2", "ips": "203.0.113.11 203.0.113.12"}
        )
    )
    assert parsed.ok, parsed.errors
    assert [r.ssh_port for r in parsed.records] == [2222, 2222]
    assert len(parsed.records[1].ips) == 2


def test_json_rows_are_reported_at_the_line_their_object_starts():
    text = _json_rows(
        JSON_GOOD,
        {**JSON_GOOD, "service_id": "SRV-2", "ips": ["10.1.1.1.1"]},
        {**JSON_GOOD, "service_id": "SRV-3", "ips": ["10.1.1.3"], "rescue": "sometimes"},
        {**JSON_GOOD, "ips": ["10.1.1.4"]},
        {**JSON_GOOD, "service_id": "SRV-5", "ips": ["10.1.1.5"], "account": "ACC-1"},
    )
    starts = [i + 1 for i, line in enumerate(text.splitlines()) if line == "  {"]
    parsed = parse_inventory_json(text)
    assert errors_of(parsed) == [
        (starts[1], "ips[0]"),
        (starts[2], "rescue"),
        (starts[3], "service_id"),
        (starts[4], "account"),
    ]


def test_json_that_is_not_a_list_of_objects_is_refused():
    assert errors_of(parse_inventory_json('{"service_id": "SRV-1"}')) == [(1, "$")]
    assert errors_of(parse_inventory_json('[\n  1,\n  "x"\n]')) == [(2, "$"), (3, "$")]
    broken = parse_inventory_json('[\n  {"service_id": "SRV-1",\n  }\n]')
    assert errors_of(broken) == [(3, "$")]
    assert broken.errors[0].message.startswith("not valid JSON")
    assert parse_inventory_json("[NaN]").errors


def test_files_are_read_by_suffix_and_a_bom_is_ignored(tmp_path: Path):
    csv_file = tmp_path / "servers.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_of(GOOD).encode())
    assert parse_inventory(csv_file).ok
    json_file = tmp_path / "servers.json"
    json_file.write_text(_json_rows(JSON_GOOD))
    assert parse_inventory(json_file).ok
    (tmp_path / "latin1.csv").write_bytes(b"\xff\xfe\xe9")
    with pytest.raises(InventoryError, match="not UTF-8"):
        parse_inventory(tmp_path / "latin1.csv")
    with pytest.raises(InventoryError, match="cannot be read"):
        parse_inventory(tmp_path / "missing.csv")


def test_the_demo_inventory_is_valid():
    parsed = parse_inventory(REPO / "deploy" / "local" / "demo-servers.csv")
    assert parsed.ok, parsed.errors
    assert len(parsed.records) >= 5

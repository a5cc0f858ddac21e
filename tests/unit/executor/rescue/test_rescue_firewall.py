"""Reading the customer's nftables ruleset: which chains could drop SSH, and nothing more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.executor.rescue.runbooks.common import RescueParams
from services.executor.rescue.runbooks.firewall import (
    _learn_network,
    chains_blocking_ssh,
    management_sources,
    parse_interfaces,
)
from services.executor.runbooks.model import CommandResult, Context, RunOptions

FIXTURE = (Path(__file__).resolve().parents[3] / "fixtures" / "rescue"
           / "nft_customer_blocks_ssh.json")


def ruleset(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]})


def chain(name: str, hook: str, policy: str = "accept", family: str = "inet",
          table: str = "filter") -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, "type": "filter",
                      "hook": hook, "prio": 0, "policy": policy}}


def rule(chain_name: str, *expr: dict[str, Any], family: str = "inet",
         table: str = "filter") -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": chain_name, "expr": list(expr)}}


def port(field: str, value: Any, proto: str = "tcp") -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}},
                      "right": value}}


DROP = {"drop": None}
ACCEPT = {"accept": None}


def test_the_customer_lockout_needs_ssh_first_in_input_only() -> None:
    chains, findings = chains_blocking_ssh(FIXTURE.read_text(), 22)
    # The input chain drops SSH; the output chain's only drop is outbound mail, which
    # cannot touch SSH replies; forward is not on SSH's path.
    assert chains == [{"family": "inet", "table": "filter", "chain": "input",
                       "direction": "in", "source": ""}]
    # The customer had no SSH source restriction and no management network is set: the
    # update says SSH is open to any address now.
    assert len(findings) == 1
    assert "from any address" in findings[0]


def test_a_chain_that_already_accepts_ssh_first_is_left_alone() -> None:
    text = ruleset(chain("input", "input", "drop"),
                   rule("input", port("dport", 22), {"counter": {"packets": 0, "bytes": 0}},
                        ACCEPT),
                   rule("input", port("dport", 22), DROP))
    assert chains_blocking_ssh(text, 22) == ([], [])


def test_accept_policy_without_drops_needs_nothing() -> None:
    text = ruleset(chain("input", "input"), rule("input", port("dport", 80), ACCEPT))
    assert chains_blocking_ssh(text, 22) == ([], [])


@pytest.mark.parametrize(("expr", "blocks"), [
    (port("dport", 22), True),
    (port("dport", 2222), False),
    (port("dport", {"set": [80, 443]}), False),
    (port("dport", {"set": [22, 80]}), True),
    (port("dport", {"range": [1, 1024]}), True),
    (port("dport", 53, proto="udp"), False),
    ({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, False),
    ({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": "198.51.100.7"}}, True),  # could be the customer's own address
])
def test_which_drop_rules_could_hit_ssh(expr: dict[str, Any], blocks: bool) -> None:
    text = ruleset(chain("input", "input"), rule("input", expr, DROP))
    chains, _ = chains_blocking_ssh(text, 22)
    assert bool(chains) is blocks


def test_outbound_ssh_replies_use_the_source_port() -> None:
    text = ruleset(chain("output", "output", "drop"), rule("output", port("dport", 25), DROP))
    chains, _ = chains_blocking_ssh(text, 22)
    assert chains == [{"family": "inet", "table": "filter", "chain": "output",
                       "direction": "out", "source": ""}]
    spared = ruleset(chain("output", "output"), rule("output", port("dport", 25), DROP),
                     rule("output", port("dport", 8080), DROP))
    # A drop on a client-side port >= 1024 could hit a reply, so it counts.
    assert chains_blocking_ssh(spared, 22)[0][0]["chain"] == "output"


def test_jumps_count_as_possible_drops_and_other_ports_are_honoured() -> None:
    text = ruleset(chain("input", "input"), rule("input", {"jump": {"target": "custom"}}))
    assert chains_blocking_ssh(text, 22)[0]
    text = ruleset(chain("input", "input", "drop"), rule("input", port("dport", 2222), ACCEPT))
    assert chains_blocking_ssh(text, 2222) == ([], [])


def test_netdev_drops_are_reported_not_touched_and_odd_names_are_not_edited() -> None:
    text = ruleset(chain("ingress", "ingress", "drop", family="netdev", table="edge"),
                   chain("in put", "input", "drop"))
    chains, findings = chains_blocking_ssh(text, 22)
    assert chains == []
    assert any("netdev chain edge/ingress" in f for f in findings)
    assert any("filter/in put" in f for f in findings)


def test_tables_of_ip_and_ip6_are_both_covered() -> None:
    text = ruleset(chain("in", "input", "drop", family="ip", table="t4"),
                   chain("in", "input", "drop", family="ip6", table="t6"),
                   chain("pre", "prerouting", "drop", family="ip", table="raw"))
    assert {(c["family"], c["table"], c["chain"]) for c in chains_blocking_ssh(text, 22)[0]} == {
        ("ip", "t4", "in"), ("ip", "raw", "pre"), ("ip6", "t6", "in")}


INTERFACES = """\
auto lo
iface lo inet loopback

auto ens3
iface ens3 inet static
\taddress 203.0.113.10/24
\tgateway 203.0.113.1
"""


def network(config: str, links: list[str], ip: str = "203.0.113.10") -> dict[str, Any]:
    text = f"== interfaces\n{config}== end\n" + "".join(f"link:{n}\n" for n in links)
    ctx: Context[Any] = Context(params=RescueParams(backup_tag="HD-1-r1", server_ip=ip),
                                platform="linux", options=RunOptions())
    return dict(_learn_network((CommandResult(exit_status=0, stdout=text),), ctx))


def test_parse_interfaces_reads_stanzas() -> None:
    assert parse_interfaces(INTERFACES) == {"lo": ["loopback"], "ens3": ["static"]}


def test_a_renamed_nic_is_fixed_when_it_is_unambiguous() -> None:
    facts = network(INTERFACES, ["lo", "eth0"])
    assert facts["iface_rename"] == ["ens3", "eth0"]


@pytest.mark.parametrize("links", [["lo", "eth0", "eth1"], ["lo"]])
def test_an_ambiguous_nic_situation_is_only_reported(links: list[str]) -> None:
    facts = network(INTERFACES, links)
    assert "iface_rename" not in facts
    assert any("not changed automatically" in f for f in facts["findings_network"])


def test_a_matching_configuration_needs_nothing_and_a_foreign_address_is_reported() -> None:
    assert network(INTERFACES, ["lo", "ens3"]) == {"nics": ["ens3"]}
    facts = network(INTERFACES, ["lo", "ens3"], ip="198.51.100.9")
    assert "iface_rename" not in facts
    assert any("198.51.100.9" in f for f in facts["findings_network"])


def saddr(value: Any, proto: str = "ip") -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                      "right": value}}


def prefix(addr: str, length: int) -> dict[str, Any]:
    return {"prefix": {"addr": addr, "len": length}}


RESTRICTED = ruleset(chain("input", "input", "drop"),
                     rule("input", port("dport", 22), DROP),
                     rule("input", saddr(prefix("198.51.100.0", 24)), port("dport", 22), ACCEPT))


def test_a_source_restricted_ssh_accept_is_kept_restricted() -> None:
    # The customer lets SSH in from 198.51.100.0/24 only; a drop in front locks them out.
    # The repair accepts SSH first from that range, never from the whole Internet.
    chains, findings = chains_blocking_ssh(RESTRICTED, 22)
    assert chains == [{"family": "inet", "table": "filter", "chain": "input",
                       "direction": "in", "source": "ip saddr 198.51.100.0/24"}]
    assert findings == ["In inet filter/input SSH (port 22) is now accepted first only from "
                        "198.51.100.0/24 (already allowed by your rules); your other rules, "
                        "including any source restrictions, are unchanged."]


def test_the_management_network_is_added_to_the_customers_sources() -> None:
    chains, findings = chains_blocking_ssh(RESTRICTED, 22, ("192.0.2.0/28", "2001:db8::/64"))
    assert [c["source"] for c in chains] == ["ip saddr 192.0.2.0/28", "ip saddr 198.51.100.0/24",
                                             "ip6 saddr 2001:db8::/64"]
    assert "192.0.2.0/28 (the provider's management network)" in findings[0]


def test_without_any_ssh_accept_the_management_network_is_the_only_source() -> None:
    text = ruleset(chain("input", "input", "drop", family="ip", table="t4"))
    chains, findings = chains_blocking_ssh(text, 22, ("192.0.2.0/28", "2001:db8::/64"))
    # An ip-family chain gets only the IPv4 range.
    assert [c["source"] for c in chains] == ["ip saddr 192.0.2.0/28"]
    assert "only from 192.0.2.0/28" in findings[0]


def test_sets_hosts_and_named_sets_of_the_customer_are_rebuilt() -> None:
    text = ruleset(chain("input", "input", "drop"),
                   rule("input", port("dport", 22), DROP),
                   rule("input", saddr({"set": ["203.0.113.7", prefix("10.0.0.0", 8)]}),
                        port("dport", {"set": [22, 80]}), ACCEPT),
                   rule("input", saddr("@admins"), port("dport", 22), ACCEPT))
    chains, _ = chains_blocking_ssh(text, 22)
    assert [c["source"] for c in chains] == ["ip saddr 10.0.0.0/8", "ip saddr 203.0.113.7",
                                             "ip saddr @admins"]


def test_the_repaired_ruleset_needs_nothing_more() -> None:
    # After the inserted scoped accepts lead the chain, the verification finds no chain.
    text = ruleset(chain("input", "input", "drop"),
                   rule("input", saddr(prefix("198.51.100.0", 24)), port("dport", 22), ACCEPT),
                   rule("input", port("dport", 22), DROP),
                   rule("input", saddr(prefix("198.51.100.0", 24)), port("dport", 22), ACCEPT))
    assert chains_blocking_ssh(text, 22) == ([], [])


def test_ssh_accepted_only_on_an_interface_is_left_alone_without_a_management_network() -> None:
    iif = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "vpn0"}}
    text = ruleset(chain("input", "input", "drop"), rule("input", port("dport", 22), DROP),
                   rule("input", iif, port("dport", 22), ACCEPT))
    chains, findings = chains_blocking_ssh(text, 22)
    assert chains == []
    assert "not changed" in findings[0]
    chains, _ = chains_blocking_ssh(text, 22, ("192.0.2.1",))
    assert [c["source"] for c in chains] == ["ip saddr 192.0.2.1"]


def test_an_unrestricted_accept_further_down_allows_an_unrestricted_repair() -> None:
    # The fixture's customer accepts tcp dport {22, 80, 443} from anywhere (after a drop
    # of 22): accepting SSH from anywhere first widens nothing, management network or not.
    chains, _ = chains_blocking_ssh(FIXTURE.read_text(), 22, ("192.0.2.0/28",))
    assert [c["source"] for c in chains] == [""]


def test_established_and_loopback_accepts_are_not_ssh_restrictions() -> None:
    text = ruleset(chain("input", "input", "drop"),
                   rule("input", {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                            "right": ["established", "related"]}}, ACCEPT),
                   rule("input", {"match": {"op": "==", "left": {"meta": {"key": "iif"}},
                                            "right": "lo"}}, ACCEPT))
    chains, _ = chains_blocking_ssh(text, 22, ("192.0.2.0/28",))
    assert [c["source"] for c in chains] == ["ip saddr 192.0.2.0/28"]


@pytest.mark.parametrize("bad", ["0.0.0.0/33", "example.net", "192.0.2.1; flush ruleset"])
def test_management_sources_must_be_addresses_or_ranges(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR range"):
        management_sources(f"192.0.2.0/28,{bad}")
    assert management_sources(" 192.0.2.5/32 , 2001:db8::/64,") == ("192.0.2.5", "2001:db8::/64")

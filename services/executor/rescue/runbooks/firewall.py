"""Firewall and network recovery in rescue mode: make SSH reachable again with the smallest
change to the customer's own rules, and fix an obviously broken interface configuration.

Firewall (nftables, loaded at boot from ``/etc/nftables.conf``). The customer's ruleset is
loaded, with the customer's own ``nft`` (chroot), into a scratch network namespace that has
the server's interface names — never into the rescue system's own, which would cut the
executor's connection. :func:`chains_blocking_ssh` reads it (``nft -j``): every base chain
on the input/prerouting (output/postrouting) path that could drop SSH — a drop policy, or
a drop, reject, jump or goto in a rule that does not plainly spare SSH (another protocol,
another port) — gets rules at its top accepting the SSH port (destination port in, source
port out), and the whole ruleset is written back to ``/etc/nftables.conf`` from ``nft list
ruleset``. Everything else of the customer's policy stays as it was (their drops, their open
ports, their other tables). Before that, the original file(s) and the normalised listing of
the ruleset are saved to the backup directory; a rewrite that does not load is put back from
there.

The repair never widens who may connect (:func:`ssh_sources`). A chain where the customer
accepts SSH only from some sources (``ip saddr 198.51.100.0/24 tcp dport 22 accept``) gets
accepts for exactly those sources, plus the provider's management network
(``EXECUTOR_RESCUE_MANAGEMENT_SOURCES``) when one is set. A chain with no SSH accept at all
gets the management network when set, and an unrestricted accept only when none is set.
SSH accepted under conditions the automation cannot reproduce (an input interface, say) is
left alone unless a management network is set. The customer's update lists, chain by chain,
what is now accepted and from where.

Interfaces (ifupdown). "Obviously broken" is one thing only: the configuration names one
interface, the server has exactly one other interface, and the configured one does not
exist — the classic lock-out after a NIC rename. It is renamed in the stanza; anything
subtler (addresses, netplan, NetworkManager) is reported as a finding, not changed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from services.executor.rescue.runbooks.common import (
    MNT,
    RescueParams,
    backup_step,
    check_root_fs,
    find_root,
    mount_root,
    out,
    read_host_keys,
    restore_from_backup,
    tag_lines,
    tagged,
    unmount_root,
)
from services.executor.runbooks.model import (
    BackupNote,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    sh,
)

Ctx = Context[RescueParams]
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")  # nft table/chain names we touch
NIC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}$")
COMMENT = "os-intervention: keep SSH reachable"
_INBOUND = {"input": "in", "prerouting": "in", "output": "out", "postrouting": "out"}
_BLOCKING = {"drop", "reject", "jump", "goto"}

# Loads /etc/nftables.conf into a scratch namespace with the server's interface names
# (rules may name them with iif/oif, which need the interface to exist). Exit 3: no file;
# 4: it does not load (stderr says why); else the ruleset as JSON.
_SCRATCH = r"""
mnt=$1; shift
[ -f "$mnt/etc/nftables.conf" ] || { echo "no /etc/nftables.conf" >&2; exit 3; }
nics=$(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); if ($2 != "lo") print $2 }')
exec unshare --net -- sh -c '
    mnt=$1 nics=$2 mode=$3; shift 3
    i=0
    for n in $nics; do
        ip link add "$n" type dummy 2>/dev/null \
            || ip link add "$n" type veth peer name "ivrscratch$i" 2>/dev/null || true
        i=$((i + 1))
    done
    ip link set lo up
    chroot "$mnt" nft -f /etc/nftables.conf >&2 || exit 4
    case $mode in
        json) exec chroot "$mnt" nft -j list ruleset ;;
        text) exec chroot "$mnt" nft list ruleset ;;
    esac
    set -e
    port=$1 tag=$2 comment=$3; shift 3
    # Five words per rule: family table chain direction source. The source is "" or a
    # match built from validated addresses ("ip saddr 198.51.100.0/24"); nft joins its
    # arguments with spaces before parsing, so it may travel as one argument.
    while [ $# -ge 5 ]; do
        if [ "$4" = in ]; then field=dport; else field=sport; fi
        chroot "$mnt" nft insert rule "$1" "$2" "$3" "$5" tcp "$field" "$port" accept \
            comment "\"$comment\""
        shift 5
    done
    conf=$mnt/etc/nftables.conf
    {
        echo "#!/usr/sbin/nft -f"
        echo "# Rewritten by OS intervention $tag: SSH (port $port) is accepted first in each chain"
        echo "# that could drop it, from the sources in the rules marked os-intervention; the"
        echo "# rest is the previous ruleset, unchanged. The previous file"
        echo "# is in /root/os-intervention/$tag/etc/nftables.conf."
        echo "flush ruleset"
        echo
        chroot "$mnt" nft list ruleset
    } > "$conf.os-intervention.new"
    chmod --reference="$conf" "$conf.os-intervention.new"
    mv -f "$conf.os-intervention.new" "$conf"
    echo "rewrote /etc/nftables.conf"
' sh "$mnt" "$nics" "$@"
"""

_STATE = r"""
mnt=$1
wants=$mnt/etc/systemd/system
for t in sysinit multi-user; do
    [ -L "$wants/$t.target.wants/nftables.service" ] && echo nftables:enabled
done
[ -f "$mnt/etc/nftables.conf" ] && echo file:nftables.conf
[ -d "$mnt/etc/nftables.d" ] && echo file:nftables.d
for f in rules.v4 rules.v6; do [ -f "$mnt/etc/iptables/$f" ] && echo "iptables:$f"; done
exit 0
"""


def _ports(value: Any) -> list[tuple[int, int]] | None:
    """An nft JSON port operand as ranges; None when it is not a plain port expression."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [(value, value)]
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return [(low, high)] if isinstance(low, int) and isinstance(high, int) else None
    if isinstance(value, dict) and "set" in value:
        ranges: list[tuple[int, int]] = []
        for item in value["set"]:
            part = _ports(item)
            if part is None:
                return None
            ranges.extend(part)
        return ranges
    return None


def _spares_ssh(rule: Mapping[str, Any], port: int, direction: str) -> bool:
    """True when a rule's own matches rule out SSH traffic, so its drop cannot hit SSH:
    another protocol, or a port SSH packets do not carry (client ports are never below 1024,
    so outbound rules on privileged destination ports spare SSH replies)."""
    for expr in rule.get("expr") or []:
        match = expr.get("match") if isinstance(expr, dict) else None
        if not isinstance(match, dict) or match.get("op") not in ("==", "in"):
            continue
        left, right = match.get("left"), match.get("right")
        if not isinstance(left, dict):
            continue
        payload, meta = left.get("payload"), left.get("meta")
        if isinstance(meta, dict) and meta.get("key") == "l4proto" and right not in (
                "tcp", 6) and isinstance(right, str | int):
            return True
        if not isinstance(payload, dict) or "protocol" not in payload:
            continue
        if payload["protocol"] in ("udp", "icmp", "icmpv6", "sctp", "udplite"):
            return True
        if payload["protocol"] != "tcp":
            continue
        ranges = _ports(right)
        if ranges is None:
            continue
        hits = any(low <= port <= high for low, high in ranges)
        if payload.get("field") == ("dport" if direction == "in" else "sport") and not hits:
            return True
        if direction == "out" and payload.get("field") == "dport" and \
                all(high < 1024 for _, high in ranges) and not hits:
            return True
    return False


Source = tuple[str, str]  # ("ip" | "ip6", "198.51.100.0/24" | "a-b" | "@set name")
_NEUTRAL = ("counter", "log", "limit")  # parts of a rule that do not narrow who it accepts


def management_sources(text: str) -> tuple[str, ...]:
    """``EXECUTOR_RESCUE_MANAGEMENT_SOURCES``: comma-separated addresses or CIDR ranges,
    normalised; a ``ValueError`` names a bad one."""
    found: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            found.append(_network_token(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"{part[:60]!r} is not an IP address or CIDR range") from None
    return tuple(dict.fromkeys(found))


def _network_token(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    # nft lists a /32 (/128) as the bare address; compare in that form.
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _management(sources: tuple[str, ...]) -> list[Source]:
    return [("ip" if ipaddress.ip_network(t, strict=False).version == 4 else "ip6", t)
            for t in sources]


def _address_tokens(value: Any, proto: str) -> list[str] | None:
    """An nft JSON address operand as source tokens; None when it is not one we rebuild."""
    version = 4 if proto == "ip" else 6
    try:
        if isinstance(value, str):
            if value.startswith("@"):
                return [value] if NAME.fullmatch(value[1:]) else None
            net = ipaddress.ip_network(value, strict=False)
            return [_network_token(net)] if net.version == version else None
        if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
            prefix = value["prefix"]
            net = ipaddress.ip_network(f"{prefix['addr']}/{int(prefix['len'])}", strict=False)
            return [_network_token(net)] if net.version == version else None
        if isinstance(value, dict) and "range" in value:
            low, high = (ipaddress.ip_address(str(v)) for v in value["range"])
            return [f"{low}-{high}"] if low.version == high.version == version else None
        if isinstance(value, dict) and isinstance(value.get("set"), list):
            tokens: list[str] = []
            for item in value["set"]:
                part = _address_tokens(item, proto)
                if part is None:
                    return None
                tokens.extend(part)
            return tokens
    except (ValueError, KeyError, TypeError):
        return None
    return None


def ssh_sources(rule: Mapping[str, Any], port: int, direction: str
                ) -> tuple[str, list[Source]] | None:
    """What an accepting rule means for SSH: ``("open", [])`` accepts SSH from anywhere,
    ``("scoped", sources)`` only from those addresses, ``("other", [])`` under conditions
    the automation does not rebuild (an interface, a mark). None: the rule does not accept
    SSH (no accept, another port) or is not about SSH (``ct state established accept``)."""
    exprs = [e for e in rule.get("expr") or [] if isinstance(e, dict)]
    if not any("accept" in e for e in exprs):
        return None
    peer = "saddr" if direction == "in" else "daddr"
    port_field = "dport" if direction == "in" else "sport"
    sources: list[Source] = []
    has_port, unknown = False, False
    for expr in exprs:
        if "accept" in expr or any(k in expr for k in _NEUTRAL):
            continue
        match = expr.get("match")
        if not isinstance(match, dict) or match.get("op") not in ("==", "in"):
            unknown = True
            continue
        left, right = match.get("left"), match.get("right")
        payload = left.get("payload") if isinstance(left, dict) else None
        meta = left.get("meta") if isinstance(left, dict) else None
        ct = left.get("ct") if isinstance(left, dict) else None
        if isinstance(payload, dict) and payload.get("protocol") == "tcp" \
                and payload.get("field") == port_field:
            ranges = _ports(right)
            if ranges is None or not any(low <= port <= high for low, high in ranges):
                return None
            has_port = True
        elif isinstance(payload, dict) and payload.get("protocol") in ("ip", "ip6") \
                and payload.get("field") == peer:
            tokens = _address_tokens(right, str(payload["protocol"]))
            if tokens is None:
                unknown = True
            else:
                sources.extend((str(payload["protocol"]), t) for t in tokens)
        elif not ((isinstance(meta, dict) and meta.get("key") == "l4proto"
                   and right in ("tcp", 6)) or (isinstance(ct, dict) and ct.get("key") == "state")):
            # "meta l4proto tcp" and "ct state new" do not narrow who may connect.
            unknown = True
    if not has_port and (unknown or not sources):
        return None  # a general accept (loopback, established): not an SSH rule
    if unknown:
        return "other", []
    return ("scoped", sources) if sources else ("open", [])


def _family_protos(family: str) -> tuple[str, ...]:
    return {"ip": ("ip",), "ip6": ("ip6",)}.get(family, ("ip", "ip6"))


def _describe(sources: list[Source], customer: set[Source], management: set[Source]) -> str:
    parts = []
    for source in sources:
        why = [w for w, group in (("already allowed by your rules", customer),
                                  ("the provider's management network", management))
               if source in group]
        parts.append(f"{source[1]} ({', '.join(why)})" if why else source[1])
    return ", ".join(parts)


def chains_blocking_ssh(ruleset: str, port: int, management: tuple[str, ...] = ()
                        ) -> tuple[list[dict[str, str]], list[str]]:
    """From ``nft -j list ruleset``: the accept rules to insert at the top of the base chains
    that could drop SSH (``family``, ``table``, ``chain``, ``direction`` in/out, ``source``:
    an nft match such as ``ip saddr 198.51.100.0/24``, or empty for any source), and findings
    for the customer, which say exactly what will be accepted where."""
    items = json.loads(ruleset).get("nftables", [])
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c.get("family"), c.get("table"), c.get("name"))] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r.get("family"), r.get("table"), r.get("chain")), []).append(r)
    managed = _management(management)
    found: list[dict[str, str]] = []
    findings: list[str] = []
    for key, chain in chains.items():
        family, table, name = key
        hook = chain.get("hook")
        if hook is None:
            continue
        if family == "netdev" or family in ("arp", "bridge"):
            if chain.get("policy") == "drop":
                findings.append(f"The {family} chain {table}/{name} drops by default and was not "
                                "changed; check that it lets SSH through.")
            continue
        direction = _INBOUND.get(str(hook))
        if direction is None or family not in ("ip", "ip6", "inet"):
            continue
        own = rules.get(key, [])
        blocking = [r for r in own
                    if any(isinstance(e, dict) and _BLOCKING.intersection(e)
                           for e in r.get("expr") or [])
                    and not _spares_ssh(r, port, direction)]
        if chain.get("policy") != "drop" and not blocking:
            continue
        if not all(isinstance(v, str) and NAME.fullmatch(v) for v in (family, table, name)):
            findings.append(f"The chain {table}/{name} has a name the automation does not "
                            "edit; check that it lets SSH through.")
            continue
        protos = _family_protos(str(family))
        kinds = [ssh_sources(r, port, direction) for r in own]
        # The rules already at the top that accept SSH: what they let in needs nothing.
        leading: list[tuple[str, list[Source]]] = []
        for kind in kinds:
            if kind is None or kind[0] == "other":
                break
            leading.append(kind)
        if any(k == "open" for k, _ in leading):
            continue
        covered = {s for _, sources in leading for s in sources}
        customer = {s for k in kinds if k is not None and k[0] == "scoped" for s in k[1]
                    if s[0] in protos}
        management_here = {s for s in managed if s[0] in protos}
        where = f"{family} {table}/{name}"
        wanted: list[Source] | None  # None: accept from anywhere
        if any(k is not None and k[0] == "open" for k in kinds):
            wanted = None  # the customer accepts SSH from anywhere already, further down
        elif customer or any(k is not None and k[0] == "other" for k in kinds):
            wanted = sorted(customer | management_here)
            if not wanted:
                findings.append(
                    f"In {where} SSH is accepted only under conditions the automation does "
                    "not rebuild (such as an input interface); it was not changed, so that "
                    "no one is let in whom your rules kept out. Review it.")
                continue
        else:
            wanted = sorted(management_here) or None
        if wanted is not None and set(wanted) <= covered:
            continue
        base = {"family": str(family), "table": str(table), "chain": str(name),
                "direction": direction}
        peer = "saddr" if direction == "in" else "daddr"
        if wanted is None:
            found.append({**base, "source": ""})
            findings.append(f"In {where} SSH (port {port}) is now accepted first from any "
                            "address: your rules had no SSH source restriction. Consider "
                            "limiting it to the addresses you connect from.")
            continue
        missing = [s for s in wanted if s not in covered]
        found.extend({**base, "source": f"{proto} {peer} {token}"} for proto, token in missing)
        findings.append(f"In {where} SSH (port {port}) is now accepted first only from "
                        f"{_describe(missing, customer, management_here)}; your other "
                        "rules, including any source restrictions, are unchanged.")
    return sorted(found, key=lambda c: tuple(c.values())), findings


def _learn_firewall(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    tags = tagged(results)
    facts: dict[str, Any] = {"nftables_enabled": bool(tags.get("nftables")),
                             "firewall_files": tags.get("file", []), "ssh_chains": []}
    findings = []
    for f in tags.get("iptables", []):
        findings.append(f"/etc/iptables/{f} (iptables-persistent) was not changed; if it is "
                        "loaded at boot, check that it accepts SSH.")
    load = results[1] if len(results) > 1 else None
    if load is None or load.exit_status == 3:
        facts["firewall"] = "none"
    elif load.exit_status == 4:
        facts["firewall"] = "broken"
        error = (load.stderr.strip().splitlines() or ["?"])[-1][:300]
        findings.append(f"/etc/nftables.conf does not load ({error}); at boot no nftables rules "
                        "are active, so it does not block SSH. It was left as it is: review it.")
    elif load.exit_status == 0:
        facts["firewall"] = "nftables"
        try:
            chains, notes = chains_blocking_ssh(load.stdout, ctx.params.ssh_port,
                                                ctx.params.management_sources)
        except (ValueError, AttributeError, TypeError):
            chains, notes = [], ["The nftables ruleset could not be analysed; not changed."]
        findings.extend(notes)
        if facts["nftables_enabled"]:
            facts["ssh_chains"] = chains
        elif chains:
            findings.append("nftables.service is not enabled, so /etc/nftables.conf is not "
                            "loaded at boot; it was left as it is.")
    if findings:
        facts["findings_firewall"] = findings
    return facts


def _verified(results: Results, ctx: Ctx) -> bool:
    try:
        chains, _ = chains_blocking_ssh(out(results), ctx.params.ssh_port,
                                        ctx.params.management_sources)
    except (ValueError, AttributeError, TypeError):
        return False
    return not chains


_BACKUP = r"""
set -e
mnt=$1 bk=$2; shift 2
mkdir -p -m 0700 "${bk%/*}" "$bk"
cd "$mnt"
for p in etc/nftables.conf etc/nftables.d; do
    if [ -e "$p" ] && [ ! -e "$bk/$p" ]; then cp -a --parents -- "$p" "$bk/"; fi
done
[ -e "$bk/nftables-ruleset-before.nft" ] || "$@" > "$bk/nftables-ruleset-before.nft"
"""


def _backup_firewall(ctx: Ctx) -> list[Any]:
    bk = f"{MNT}{ctx.params.backup_dir}"
    return [sh(_BACKUP, MNT, bk, "sh", "-c", _SCRATCH, "sh", MNT, "text", root=True)]


def _firewall_notes(ctx: Ctx) -> list[BackupNote]:
    where = ctx.params.backup_dir
    notes = [BackupNote(location=f"{where}/etc/{f} (on the server's disk)",
                        description=f"copy of /etc/{f} before the firewall change")
             for f in ctx.facts.get("firewall_files") or []]
    notes.append(BackupNote(location=f"{where}/nftables-ruleset-before.nft (on the server's "
                                     "disk)",
                            description="the ruleset /etc/nftables.conf loaded before the "
                                        "change, as nft lists it"))
    return notes


_NETWORK = r"""
mnt=$1
if [ -f "$mnt/etc/network/interfaces" ]; then
    echo "== interfaces"; cat "$mnt/etc/network/interfaces"; echo "== end"
fi
[ -d "$mnt/etc/netplan" ] && ls "$mnt/etc/netplan" | sed 's/^/netplan:/'
[ -d "$mnt/etc/NetworkManager/system-connections" ] && echo "networkmanager:yes"
ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print "link:" $2 }'
exit 0
"""


def parse_interfaces(text: str) -> dict[str, list[str]]:
    """ifupdown stanzas: interface name -> the methods configured for it."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 4 and parts[0] == "iface":
            found.setdefault(parts[1], []).append(parts[3])
    return found


def _learn_network(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    text = out(results)
    config, _, rest = text.partition("== end")
    config = config.partition("== interfaces")[2]
    tags = tag_lines(rest)
    links = [n for n in tags.get("link", []) if NIC.fullmatch(n) and n != "lo"]
    findings = []
    if tags.get("netplan") or tags.get("networkmanager"):
        findings.append("The network is (also) configured by netplan or NetworkManager, which "
                        "the automation does not check.")
    facts: dict[str, Any] = {"nics": links}
    stanzas = {n: m for n, m in parse_interfaces(config).items() if n != "lo"}
    missing = [n for n in stanzas if n not in links]
    if stanzas and len(stanzas) == 1 and missing and len(links) == 1 and NIC.fullmatch(missing[0]):
        facts["iface_rename"] = [missing[0], links[0]]
        findings.append(f"/etc/network/interfaces configured {missing[0]}, which does not exist "
                        f"on this server; it now configures {links[0]}, the server's only "
                        "network interface.")
    elif missing:
        findings.append(f"/etc/network/interfaces configures {', '.join(missing)}, which this "
                        f"server does not have (it has {', '.join(links) or 'none'}); not "
                        "changed automatically.")
    addresses = [line.split()[1].split("/")[0] for line in config.splitlines()
                 if len(line.split()) >= 2 and line.split()[0] == "address"]
    if addresses and ctx.params.server_ip not in addresses:
        findings.append(f"The server's address {ctx.params.server_ip} is not among the static "
                        f"addresses in /etc/network/interfaces ({', '.join(addresses)}); not "
                        "changed automatically.")
    if findings:
        facts["findings_network"] = findings
    return facts


_RENAME = r"""
set -e
f=$1/etc/network/interfaces old=$2 new=$3
awk -v old="$old" -v new="$new" '
    $1 ~ /^(auto|allow-auto|allow-hotplug|iface|up|down|pre-up|post-up|pre-down|post-down)$/ {
        for (i = 2; i <= NF; i++) if ($i == old) $i = new
    }
    { print }' "$f" > "$f.os-intervention.new"
chmod --reference="$f" "$f.os-intervention.new"
mv -f "$f.os-intervention.new" "$f"
"""

_HAS_IFACE = r"""
awk -v n="$2" '$1 == "iface" && $2 == n { found = 1 } END { exit !found }' \
    "$1/etc/network/interfaces"
"""


def _rename(ctx: Ctx) -> tuple[str, str]:
    old, new = ctx.facts["iface_rename"]
    return str(old), str(new)


def _scratch(ctx: Ctx, mode: str) -> list[Any]:
    return [sh(_SCRATCH, MNT, mode, root=True, ok_exit=None)]


def _steps(params: RescueParams, platform: Platform) -> tuple[Step[RescueParams], ...]:
    return (
        find_root(), check_root_fs(), mount_root(),
        Step(name="inspect_firewall", title="Load the firewall rules in a scratch namespace "
                                            "and find what blocks SSH",
             requires=("fact:root_device",),
             precheck=lambda ctx: [sh(_STATE, MNT, root=True), *_scratch(ctx, "json")],
             learn=_learn_firewall),
        Step(name="inspect_network", title="Compare the network configuration with the "
                                           "server's interfaces",
             requires=("fact:root_device",),
             precheck=lambda ctx: [sh(_NETWORK, MNT, root=True)], learn=_learn_network),
        Step(name="backup_firewall", title="Save the firewall configuration and the current "
                                           "ruleset",
             requires=("fact:ssh_chains",),
             precheck=lambda ctx: [sh('test -e "$1/nftables-ruleset-before.nft"',
                                      f"{MNT}{ctx.params.backup_dir}", root=True,
                                      ok_exit=frozenset({0, 1}))],
             needed=lambda results, ctx: bool(results) and results[0].exit_status == 1,
             change=_backup_firewall,
             verify=lambda ctx: [sh('test -s "$1/nftables-ruleset-before.nft"',
                                    f"{MNT}{ctx.params.backup_dir}", root=True)],
             backups=_firewall_notes),
        backup_step("backup_interfaces", "Back up the network configuration",
                    ("etc/network/interfaces",), "the interface fix", when="iface_rename"),
        Step(name="allow_ssh", title=f"Accept SSH (port {params.ssh_port}) first in the "
                                     "chains that could drop it",
             requires=("fact:ssh_chains",),
             change=lambda ctx: [sh(_SCRATCH, MNT, "rewrite", str(ctx.params.ssh_port),
                                    ctx.params.backup_tag, COMMENT,
                                    *(chain.get(k, "") for chain in ctx.facts["ssh_chains"]
                                      for k in ("family", "table", "chain", "direction",
                                                "source")),
                                    root=True)],
             verify=lambda ctx: _scratch(ctx, "json"), verified=_verified,
             rollback=lambda ctx: restore_from_backup(ctx, "etc/nftables.conf")),
        Step(name="fix_interfaces", title="Point the network configuration at the server's "
                                          "interface",
             requires=("fact:iface_rename",),
             change=lambda ctx: [sh(_RENAME, MNT, *_rename(ctx), root=True)],
             verify=lambda ctx: [sh(_HAS_IFACE, MNT, _rename(ctx)[1], root=True)],
             rollback=lambda ctx: restore_from_backup(ctx, "etc/network/interfaces")),
        read_host_keys(), unmount_root(),
    )


RESCUE_NETWORK_RECOVERY: Runbook[RescueParams] = Runbook(
    name="rescue.network_recovery", category="network_recovery",
    title="Firewall and network recovery in rescue mode", platforms=frozenset({"linux"}),
    params=RescueParams, build=_steps)

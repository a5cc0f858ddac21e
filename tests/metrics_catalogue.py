"""What the dashboard asks for and what the services export, for the metric tests.

Used by tests/unit/test_dashboard_metrics.py (names), tests/unit/test_alert_rules.py and
tests/integration/test_metrics_scrape.py (live values); an end-to-end run can use
:func:`dashboard_selectors` and :func:`parse_scrape` the same way to check that every panel
has data after ``intervene demo``.

- :func:`dashboard_targets` reads every PromQL query of deploy/grafana/dashboards/*.json,
  with Grafana's variables replaced by values Prometheus accepts.
- :func:`selectors` finds the series selectors (metric name and label matchers) in a query:
  a small PromQL lexer, which knows functions, aggregations and their ``by``/``without``
  label lists, binary-operator modifiers, strings and durations.
- :func:`exported_metrics` builds the services' real instruments in-process (the notifier,
  which brings the shared runtime and FastStream's middleware along, and intake's own
  Prometheus metrics), records one value into each through a meter provider that sees every
  instrument created, and reads the names back from the real OpenTelemetry → Prometheus
  exporter: no list of names to drift.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"

# Series Prometheus makes itself for every scrape target: not exported by any service.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Grafana's built-in variables, as any valid duration, and the dashboard's own job and
# instance variables at their default ("All", whose value the linter requires to be ".+").
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h",
                     "$job": ".+", "$instance": ".+"}


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str  # Grafana variables already replaced


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from _panels(item.get("panels") or [])  # collapsed rows nest their panels


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_targets(path: Path | None = None) -> list[Target]:
    targets: list[Target] = []
    for file in [path] if path else dashboard_files():
        board = json.loads(file.read_text(encoding="utf-8"))
        for panel in _panels(board["panels"]):
            for target in panel.get("targets") or []:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                if "$" in re.sub(r"\{\{.*?\}\}", "", expr):
                    raise AssertionError(f"{panel['title']}: unknown variable in {expr!r}")
                targets.append(Target(panel=panel["title"], ref=target["refId"], expr=expr))
    return targets


def recording_rules() -> set[str]:
    names: set[str] = set()
    for file in RULES.glob("*.yml"):
        for group in yaml.safe_load(file.read_text(encoding="utf-8"))["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


# --- PromQL selectors ------------------------------------------------------------------------

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
MODIFIERS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>\d[\w.]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^=<>@])
  | (?P<punct>[(){}\[\],])
""", re.VERBOSE)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...] = field(default=())

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr``; raises ValueError on what it cannot read."""
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0

    def skip_group(start: int, open_: str, close: str) -> int:
        depth = 0
        for j in range(start, len(tokens)):
            if tokens[j][1] == open_:
                depth += 1
            elif tokens[j][1] == close:
                depth -= 1
                if depth == 0:
                    return j + 1
        raise ValueError(f"unbalanced {open_!r} in {expr!r}")

    def read_matchers(start: int) -> tuple[tuple[Matcher, ...], int]:
        matchers: list[Matcher] = []
        j = start + 1
        while tokens[j][1] != "}":
            (k1, label), (k2, op), (k3, value) = tokens[j:j + 3]
            if k1 != "ident" or k2 != "op" or k3 != "string":
                raise ValueError(f"bad label matcher near {label!r} in {expr!r}")
            matchers.append(Matcher(label, op, _unquote(value)))
            j += 3
            if tokens[j][1] == ",":
                j += 1
        return tuple(matchers), j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in MODIFIERS:
            i = skip_group(i + 1, "(", ")") if after == "(" else i + 1
        elif kind == "ident" and (text in AGGREGATIONS or after == "("):
            i += 1  # a function or an aggregation: its arguments are read next
        elif kind == "ident" and text.lower() in KEYWORDS:
            i += 1
        elif kind == "ident":
            matchers: tuple[Matcher, ...] = ()
            i += 1
            if after == "{":
                matchers, i = read_matchers(i)
            found.append(Selector(text, matchers))
        elif text == "{":
            matchers, i = read_matchers(i)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            if not names:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            found.append(Selector(names[0], tuple(m for m in matchers
                                                  if m.label != "__name__")))
        elif text == "[":
            i = skip_group(i, "[", "]")  # a range or subquery duration
        else:
            i += 1
    return found


# --- what the services export ---------------------------------------------------------------


@dataclass
class Exported:
    """Sample names the services export, and each histogram's bucket bounds."""

    samples: set[str] = field(default_factory=set)
    buckets: dict[str, set[str]] = field(default_factory=dict)  # "<name>_bucket" -> le values

    def add_text(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            suffixes = {"counter": ("_total",), "gauge": ("",), "untyped": ("",),
                        "histogram": ("_bucket", "_sum", "_count"),
                        "summary": ("", "_sum", "_count")}.get(family.type, ("",))
            # A labelled metric nobody used yet has no samples: its type says its names.
            self.samples |= {family.name + s for s in suffixes}
            for sample in family.samples:
                self.samples.add(sample.name)
                if sample.name.endswith("_bucket"):
                    self.buckets.setdefault(sample.name, set()).add(sample.labels["le"])


class _CapturingMeter:
    """Delegates to a real meter and remembers every instrument created through it."""

    def __init__(self, inner: Any, sink: list[tuple[str, Any]]) -> None:
        self._inner = inner
        self._sink = sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("create_observable_"):
            def observable(*args: Any, **kwargs: Any) -> Any:
                # Observe a value even when the service's own callback has nothing to report
                # yet (no partition fetched, no board read): only the name matters here.
                kwargs["callbacks"] = [*(kwargs.get("callbacks") or ()),
                                       lambda _options: [Observation(1)]]
                return attr(*args, **kwargs)
            return observable
        if name.startswith("create_"):
            def create(*args: Any, **kwargs: Any) -> Any:
                instrument = attr(*args, **kwargs)
                self._sink.append((name, instrument))
                return instrument
            return create
        return attr


class CapturingMeterProvider:
    def __init__(self, inner: MeterProvider) -> None:
        self.inner = inner
        self.instruments: list[tuple[str, Any]] = []

    def get_meter(self, *args: Any, **kwargs: Any) -> _CapturingMeter:
        return _CapturingMeter(self.inner.get_meter(*args, **kwargs), self.instruments)

    def record_one_of_each(self) -> None:
        for kind, instrument in self.instruments:
            if kind in ("create_counter", "create_up_down_counter"):
                instrument.add(1)
            elif kind == "create_histogram":
                instrument.record(1.0)
            elif kind == "create_gauge":
                instrument.set(1)


def exported_metrics() -> Exported:
    """Build the services' instruments in-process and read back the names they export."""
    from services.intake.bootstrap import IntakeService
    from services.intake.settings import IntakeSettings
    from services.notifier.app import build
    from services.notifier.settings import NotifierSettings
    from services.runtime.keys import init_keys
    from services.runtime.metrics import metric_views
    from services.runtime.telemetry import Telemetry

    registry = CollectorRegistry()
    # The same views every service's MeterProvider gets (services/runtime/telemetry.py).
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)],
                             views=metric_views())
    capturing = CapturingMeterProvider(provider)
    telemetry = Telemetry(service_name="notifier", tracer_provider=TracerProvider(),
                          meter_provider=capturing,  # type: ignore[arg-type]
                          registry=registry)
    # Construction does no I/O but reading the notifier's signing key: the broker and the
    # store are only reached on start().
    with tempfile.TemporaryDirectory(prefix="metrics-keys-") as keys:
        notifier = build(
            NotifierSettings(intervention_keys_dir=str(init_keys(Path(keys)).directory)),
            telemetry=telemetry, run_sweeper=False, serve_http=False)
    # The executor's work-queue gauges (services/executor/app.py calls the shared runtime's
    # watch_work): the same instruments, whichever runtime registers them.
    notifier.runtime.metrics.watch_work(queued=lambda: 0, running=lambda: 0,
                                        oldest_wait=lambda: 0.0, concurrency=1, queue_size=1)
    capturing.record_one_of_each()
    exported = Exported()
    exported.add_text(generate_latest(registry).decode())
    # Intake's own prometheus_client metrics (and the runtime's OTel ones, in its registry).
    intake = IntakeService(IntakeSettings())
    exported.add_text(intake.metrics.render().decode())
    provider.shutdown()
    return exported


# --- a scrape --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_scrape(text: str) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def dashboard_selectors() -> list[tuple[Target, Selector]]:
    return [(t, s) for t in dashboard_targets() for s in selectors(t.expr)]

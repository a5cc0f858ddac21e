"""Redaction by value: a secret the process has seen is masked wherever it shows up.

Field-name rules alone miss the leaks that matter here - a password echoed in command
output, a private key inside an exception message, a credential in a URL - so a
:class:`Redactor` *learns* secret values and masks every occurrence of them, and of the
encodings a secret typically takes on its way into output or logs (base64, also inside a
longer base64 stream such as HTTP basic auth; URL encoding; JSON string escaping; shell
quoting; hex, as ``xxd -p`` or ``od`` print it), also when a line break was inserted
anywhere in it (a wrapped base64 block, a terminal-width hex dump). Structured data
additionally has values under sensitive field names (``password``, ``private_key``,
``token``, ``Authorization`` ...) masked whether learnt or not, and PEM private key blocks are
masked in any text.

``crypto.seal`` and ``crypto.open_sealed`` teach the process-wide :func:`default_redactor`
every plaintext they handle, so a service cannot forget to; code that obtains a secret
any other way (e.g. a newly generated password) calls ``default_redactor().add(...)``.
A bounded redactor forgets its oldest learnt secrets; the process's own credentials, which
live as long as the process (the Kafka SASL password, an API token, chat bot tokens), are
learnt with :meth:`Redactor.pin` instead and never forgotten, and the secrets of a running
intervention are held for as long as it runs (:meth:`Redactor.holding`), however many
other tickets' secrets arrive meanwhile.

Output is redacted *before* it is cut to a size (:meth:`Redactor.redact_tail`): a secret
straddling the cut would otherwise be stored half in clear.

Kafka SASL authentication payloads are masked whatever the secrets learnt: aiokafka logs
every request it sends at DEBUG, and a PLAIN ``SaslAuthenticateRequest`` carries
``\\0user\\0password`` in clear (see :func:`mask_sasl_payloads`).

Values shorter than ``min_length`` (4) characters are not learnt: masking every ``"abc"`` or
``"1"`` would shred ordinary output while protecting nothing a guess would not find.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import contextvars
import dataclasses
import json
import logging
import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from itertools import groupby
from operator import itemgetter
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel

__all__ = [
    "PLACEHOLDER",
    "RedactingFilter",
    "Redactor",
    "default_redactor",
    "install_log_redaction",
    "is_sensitive_field",
    "mask_sasl_payloads",
    "masked_sasl_request",
    "redact_record",
]

PLACEHOLDER = "[REDACTED]"

# Field names whose values are secret by nature. Matched on the last word of the name
# after normalising case, dashes and camelCase ("X-Auth-Token", "rootPassword",
# "aws_secret_access_key"), so "token_type", "key_id" or "ssh_host_key" stay readable.
_SECRET_FIELD = re.compile(
    r"(?:^|_)(?:password|passwd|pwd|passphrase|secret|token|private_key|secret_key|"
    r"access_key|api_key|apikey)$"
)
# HTTP header names carrying credentials. Only their scalar values are masked: the
# ticket's ``authorization`` object is the customer's written consent, which the audit
# trail must keep readable.
_HEADER_FIELD = re.compile(r"^(?:proxy_)?authorization$|^(?:set_)?cookie$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# A private key printed by a command (``cat /etc/ssh/ssh_host_ed25519_key``) was never
# learnt, yet must not reach the audit log; an unterminated block (truncated output) is
# masked to the end.
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

# aiokafka.conn logs ``Request to host:port id: SaslAuthenticateRequest_v1(sasl_auth_bytes=
# b'\x00user\x00password')`` for every SASL exchange (PLAIN sends the password itself).
# The payload is masked by type when the request object is a log argument, and by its repr
# in any text, so the mask holds however logging is set up and whichever secrets the
# redactor still knows. The bytes literal is matched whole (a ")" may sit inside it); an
# unterminated one (a truncated line) is masked to the end of the line.
_SASL_REQUEST = "SaslAuthenticateRequest"
_SASL_PAYLOAD = re.compile(
    r"(SaslAuthenticateRequest\w*\(sasl_auth_bytes=)"
    r"(?:b'(?:[^'\\\n]|\\.)*'\)?|b\"(?:[^\"\\\n]|\\.)*\"\)?|[^\n]*)"
)

_URLSAFE = str.maketrans("+/", "-_")
_MULTILINE_PART_MIN = 16  # lines of a multi-line secret learnt on their own, see _forms


def is_sensitive_field(name: str, value: Any) -> bool:
    """True if ``value``, found under this field or header name, is secret by its name."""
    if value is None:  # kept, so "no password given" stays visible
        return False
    normalised = _CAMEL_BOUNDARY.sub("_", name).lower().replace("-", "_").strip("_ ")
    if _SECRET_FIELD.search(normalised):
        return True
    return bool(_HEADER_FIELD.search(normalised)) and isinstance(value, str | bytes | list)


def mask_sasl_payloads(text: str, placeholder: str = PLACEHOLDER) -> str:
    """``text`` with the payload of every ``SaslAuthenticateRequest`` repr masked."""
    if _SASL_REQUEST not in text:
        return text
    return _SASL_PAYLOAD.sub(lambda m: f"{m.group(1)}{placeholder})", text)


def _is_sasl_request(value: object) -> bool:
    return type(value).__name__.startswith(_SASL_REQUEST)


def masked_sasl_request(value: object, placeholder: str = PLACEHOLDER) -> object:
    """A SASL authenticate request object as a string without its payload; anything else
    unchanged. For log arguments, so the payload is never even formatted."""
    if _is_sasl_request(value):
        return f"{type(value).__name__}(sasl_auth_bytes={placeholder})"
    return value


def _base64_forms(raw: bytes) -> set[str]:
    """The secret's base64, standalone and as it appears inside a longer encoded stream.

    Inside a stream (``user:password`` in basic auth) the secret starts at byte offset 0,
    1 or 2 of a 3-byte group; for each offset only the characters computed from secret
    bits alone are stable, so those are the ones matched.
    """
    forms: set[str] = set()
    standalone = base64.b64encode(raw).decode("ascii")
    forms.update({standalone, standalone.rstrip("=")})
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        first = -(-8 * offset // 6)  # first char holding no prefix bits (ceil)
        last = 8 * (offset + len(raw)) // 6  # chars after this hold suffix bits
        forms.add(encoded[first:last])
    return forms | {form.translate(_URLSAFE) for form in forms}


def _forms(secret: str, min_length: int) -> frozenset[str]:
    """Every spelling of ``secret`` worth masking."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        shlex.quote(secret),
        # As Python prints it inside a str or bytes repr (a logged dict, tuple or bytes):
        # quotes and non-ASCII characters escaped.
        repr(secret)[1:-1],
        repr(secret.encode("utf-8"))[2:-1],
        # Hex dumps (xxd -p, od -An -tx1 without spaces, sha-like tokens printed as hex).
        secret.encode("utf-8").hex(),
        secret.encode("utf-8").hex().upper(),
    }
    forms |= _base64_forms(secret.encode("utf-8"))
    if "\n" in secret:
        # A multi-line secret (an OpenSSH private key) often reappears re-wrapped or with
        # other line endings; its long lines are secret on their own. PEM armour lines
        # are public boilerplate and are left alone.
        forms.update(
            line.strip()
            for line in secret.splitlines()
            if len(line.strip()) >= _MULTILINE_PART_MIN and not line.startswith("-----")
        )
    return frozenset(form for form in forms if len(form) >= min_length)


def _radix(forms: list[str]) -> str:
    """Regex for a sorted list of distinct strings, as a radix tree of their prefixes."""
    terminal = forms[0] == ""  # "" sorts first
    branches = []
    for _, grouped in groupby(forms[1:] if terminal else forms, key=itemgetter(0)):
        group = list(grouped)
        # Sorted, so the first and last strings bound the group's common prefix.
        first, last = group[0], group[-1]
        length = min(len(first), len(last))
        shared = next((i for i in range(length) if first[i] != last[i]), length)
        prefix = first[:shared]
        branches.append(re.escape(prefix) + _radix([form[len(prefix) :] for form in group]))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # Greedy "?" tries the longer continuation first, so the longest form wins.
    return f"(?:{body})?" if terminal else body


def _forms_pattern(forms: Iterable[str]) -> re.Pattern[str]:
    """One regex matching, at any position, the longest form that starts there.

    Compiled as a radix tree: a flat ``a|b|c`` alternation costs one attempt per
    alternative at every position of the text (measured ~50 s per MB with 15 000 forms),
    the tree about one step per matched character (under 1 s per MB for the same set).
    """
    ordered = sorted(set(forms))
    try:
        return re.compile(_radix(ordered))
    except RecursionError:
        # Only forms nested as prefixes of each other hundreds deep get here (``re``
        # recurses per nested group); a flat alternation is slower but has no depth.
        return re.compile("|".join(map(re.escape, sorted(ordered, key=len, reverse=True))))


_GROUP_SIZE = 16
_PINNED_GROUP = -1  # the pattern of the pinned secrets (see Redactor.pin)
# A line break a tool inserted: base64 -w76, a hex dump, a terminal wrapping a long value
# (the next line may be indented). Masking across one costs a second pass over the text
# with the breaks removed; matches found there map back onto the original characters.
_LINE_BREAK = re.compile(r"\r?\n[ \t]*")
# Longest form a straddling secret can have: the window searched before a cut keeps this
# much before the cut point, so a secret crossing the cut is still seen whole.
_TAIL_MARGIN = 64 * 1024
_HOLDER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "redaction_holder", default=None)


def _joined(text: str) -> tuple[str, list[int], list[int]] | None:
    """``text`` without line breaks, plus the map back: segment starts in the joined text
    and the original offsets they came from. None when there is no break."""
    if "\n" not in text:
        return None
    pieces: list[str] = []
    joined_starts: list[int] = []
    original_starts: list[int] = []
    at = length = 0
    for match in _LINE_BREAK.finditer(text):
        joined_starts.append(length)
        original_starts.append(at)
        pieces.append(text[at:match.start()])
        length += match.start() - at
        at = match.end()
    joined_starts.append(length)
    original_starts.append(at)
    pieces.append(text[at:])
    return "".join(pieces), joined_starts, original_starts


def _to_original(pos: int, joined_starts: list[int], original_starts: list[int]) -> int:
    i = bisect.bisect_right(joined_starts, pos) - 1
    return original_starts[i] + pos - joined_starts[i]


class Redactor:
    """Learns secret values and masks them, and their common encodings, in text and data.

    Thread-safe: ``add`` may race with ``redact_text`` from other threads. The pattern is
    compiled lazily on first use after an ``add``, so learning many secrets in a row costs
    one compilation. With ``max_secrets`` set, the oldest learnt secrets are forgotten
    beyond that many, bounding memory and pattern size in long-running processes; secrets
    learnt with :meth:`pin` are never forgotten and do not count against that bound.
    """

    def __init__(
        self,
        *,
        min_length: int = 4,
        placeholder: str = PLACEHOLDER,
        max_secrets: int | None = None,
    ) -> None:
        if min_length < 1:
            raise ValueError("min_length must be at least 1")
        self.min_length = min_length
        self.placeholder = placeholder
        self.max_secrets = max_secrets
        # secret -> (its group, its forms). Secrets are compiled in groups of _GROUP_SIZE
        # by arrival order, so learning one more recompiles one small group (~8 ms), not
        # the whole set (~0.7 s at 1024 secrets, long enough to stall a Kafka consumer's
        # heartbeats when it happens on the event loop).
        self._secrets: OrderedDict[str, tuple[int, frozenset[str]]] = OrderedDict()
        # Pinned secrets -> their forms; compiled as one group of their own, _PINNED_GROUP.
        self._pinned: dict[str, frozenset[str]] = {}
        self._arrivals = 0
        # Secrets held by running interventions (holder -> secrets), never evicted while
        # held; see holding().
        self._holds: dict[str, set[str]] = {}
        self._patterns: dict[int, re.Pattern[str]] = {}
        self._dirty: set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the values
        return f"Redactor(secrets={self.secret_count}, min_length={self.min_length})"

    # A count property rather than ``__len__``: an empty redactor must stay truthy, or
    # ``redactor or default_redactor()`` would silently swap in the shared one.
    @property
    def secret_count(self) -> int:
        """How many secrets are masked now, the pinned ones included."""
        return len(self._secrets) + len(self._pinned)

    def add(self, secret: str) -> None:
        """Learn ``secret``; values shorter than ``min_length`` are ignored (see module doc).

        With ``max_secrets`` set it is forgotten again once that many newer secrets have
        been learnt: for secrets that come and go (a ticket's credentials). A secret the
        process holds for its whole life goes to :meth:`pin` instead.
        """
        if len(secret) < self.min_length:
            return
        forms = _forms(secret, self.min_length)
        holder = _HOLDER.get()
        with self._lock:
            if secret in self._pinned:
                return
            if holder is not None:
                self._holds.setdefault(holder, set()).add(secret)
            if secret in self._secrets:
                self._secrets.move_to_end(secret)
                return
            group = self._arrivals // _GROUP_SIZE
            self._arrivals += 1
            self._secrets[secret] = (group, forms)
            self._dirty.add(group)
            self._evict()

    def _evict(self) -> None:
        """Forget the oldest secrets beyond ``max_secrets``, skipping held ones (a long
        rescue run's password must stay masked however many tickets arrive meanwhile)."""
        if self.max_secrets is None or len(self._secrets) <= self.max_secrets:
            return
        held = set().union(*self._holds.values()) if self._holds else set()
        excess = len(self._secrets) - self.max_secrets
        for secret in [s for s in self._secrets if s not in held][:excess]:
            old_group, _ = self._secrets.pop(secret)
            self._dirty.add(old_group)

    @contextlib.contextmanager
    def holding(self, holder: str) -> Iterator[None]:
        """Hold every secret learnt (or learnt again) inside this block, in this task or
        thread, under ``holder`` (a claim id): ``max_secrets`` does not evict them until the
        block ends. Around one intervention's run, so its secrets stay masked for as long
        as it can print them. Afterwards they are ordinary learnt secrets again."""
        token = _HOLDER.set(holder)
        try:
            yield
        finally:
            _HOLDER.reset(token)
            with self._lock:
                self._holds.pop(holder, None)
                self._evict()

    def held(self, holder: str) -> frozenset[str]:
        """The secrets ``holder`` holds now (for tests and diagnostics: never logged)."""
        with self._lock:
            return frozenset(self._holds.get(holder, ()))

    def add_all(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self.add(secret)

    def pin(self, secret: str) -> None:
        """Learn ``secret`` for the life of this redactor: never evicted by ``max_secrets``.

        For the process's own credentials (the Kafka SASL password, an API token, a chat
        bot token): a handful, known at start, that may show up in a log line at any time.
        A bounded redactor would otherwise forget them after ``max_secrets`` ticket secrets.
        Values shorter than ``min_length`` are ignored, as by :meth:`add`.
        """
        if len(secret) < self.min_length:
            return
        forms = _forms(secret, self.min_length)
        with self._lock:
            if secret in self._pinned:
                return
            self._pinned[secret] = forms
            self._dirty.add(_PINNED_GROUP)
            learnt = self._secrets.pop(secret, None)
            if learnt is not None:  # learnt before with add(): now only pinned
                self._dirty.add(learnt[0])

    def pin_all(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self.pin(secret)

    def _current_patterns(self) -> list[re.Pattern[str]]:
        if not self._dirty:
            return list(self._patterns.values())
        with self._lock:
            if self._dirty:
                members: dict[int, set[str]] = {g: set() for g in self._dirty}
                for group, secret_forms in self._secrets.values():
                    if group in members:
                        members[group] |= secret_forms
                if _PINNED_GROUP in members:
                    members[_PINNED_GROUP] = set().union(*self._pinned.values())
                for group, union in members.items():
                    if union:
                        self._patterns[group] = _forms_pattern(union)
                    else:
                        self._patterns.pop(group, None)
                self._dirty.clear()
            return list(self._patterns.values())

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Where learnt secrets are in ``text``: sorted, merged ``(start, end)`` spans,
        also across inserted line breaks."""
        patterns = self._current_patterns()
        if not patterns:
            return []
        # Matches are searched from every start position, not just after the previous
        # match, and overlapping ones (also across groups) merged: with secrets "abcdef"
        # and "defghi" a plain re.sub on "abcdefghi" would leave "ghi" in the clear.
        spans: list[tuple[int, int]] = []
        for pattern in patterns:
            match = pattern.search(text)
            while match is not None:
                spans.append(match.span())
                match = pattern.search(text, match.start() + 1)
        joined = _joined(text)
        if joined is not None:
            flat, joined_starts, original_starts = joined
            for pattern in patterns:
                match = pattern.search(flat)
                while match is not None:
                    start, end = match.span()
                    spans.append((_to_original(start, joined_starts, original_starts),
                                  _to_original(end - 1, joined_starts, original_starts) + 1))
                    match = pattern.search(flat, start + 1)
        if not spans:
            return []
        spans.sort()
        merged = [spans[0]]
        for start, end in spans[1:]:
            last_start, last_end = merged[-1]
            if start > last_end:
                merged.append((start, end))
            else:
                merged[-1] = (last_start, max(last_end, end))
        return merged

    def _render(self, text: str, spans: list[tuple[int, int]], begin: int = 0) -> str:
        """``text[begin:]`` with every span that reaches past ``begin`` masked whole."""
        pieces: list[str] = []
        emitted = begin
        for start, end in spans:
            if end <= begin:
                continue
            pieces += [text[emitted:max(start, emitted)], self.placeholder]
            emitted = end
        pieces.append(text[emitted:])
        return "".join(pieces)

    def _prepare(self, text: str) -> str:
        if "PRIVATE KEY-----" in text:
            text = _PEM_PRIVATE_KEY.sub(self.placeholder, text)
        return mask_sasl_payloads(text, self.placeholder)

    def redact_text(self, text: str) -> str:
        """``text`` with every learnt secret, its encodings, PEM private keys and Kafka SASL
        authentication payloads masked."""
        text = self._prepare(text)
        spans = self._spans(text)
        return self._render(text, spans) if spans else text

    def redact_tail(self, text: str, limit: int, *, cut_note: bool = True) -> str:
        """The last ``limit`` characters of ``text``, redacted *before* the cut: a secret
        crossing the cut point is masked whole, never kept half in clear. Only the last
        ``limit`` characters plus a margin (longer than any form of a secret) are searched,
        so a huge output costs no more than a big one."""
        if len(text) <= limit:
            return self.redact_text(text)
        window = text[-(limit + _TAIL_MARGIN):]
        cut = len(text) - limit
        # Searched with the margin in front; kept from the cut point on. PEM and SASL
        # masks run on the window as a whole for the same reason.
        window_text = self._prepare(window)
        begin = max(0, len(window_text) - limit)
        kept = self._render(window_text, self._spans(window_text), begin)
        return f"[… {cut} earlier characters cut …]\n{kept}" if cut_note else kept

    def redact(self, value: Any) -> Any:
        """A redacted copy of ``value``: strings by value, mappings also by field name.

        Handles str, bytes (as UTF-8, other bytes kept), mappings, lists, tuples, sets,
        pydantic models and dataclass instances (dumped to JSON-compatible data, since the
        result is bound for logs and the store). A Kafka ``SaslAuthenticateRequest``
        becomes a string without its payload; anything else is returned unchanged.
        """
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bytes | bytearray):
            # surrogateescape round-trips undecodable bytes untouched.
            text = bytes(value).decode("utf-8", "surrogateescape")
            return self.redact_text(text).encode("utf-8", "surrogateescape")
        if isinstance(value, BaseModel):
            return self.redact(value.model_dump(mode="json"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.redact(dataclasses.asdict(value))
        if isinstance(value, Mapping):
            return {
                self.redact(key): (
                    self.redact_field(key, item) if isinstance(key, str) else self.redact(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.redact(item) for item in value)
        if isinstance(value, set | frozenset):
            return type(value)(self.redact(item) for item in value)
        # aiokafka's SASL authenticate request, as a log argument: never formatted whole.
        return masked_sasl_request(value, self.placeholder)

    def redact_field(self, name: str, value: Any) -> Any:
        """``value`` as stored under field ``name``: masked outright if the name is sensitive."""
        if is_sensitive_field(name, value):
            return self.placeholder
        return self.redact(value)


# The process-wide redactor. Bounded so a long-running intake or executor does not keep
# every customer's password in memory forever. 256 secrets is a hundred or more tickets
# back, well past where an old secret could resurface.
_DEFAULT = Redactor(max_secrets=256)


def default_redactor() -> Redactor:
    """The redactor this process's crypto, logging and audit writer share."""
    return _DEFAULT


# --- logging -----------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))
) | {"message", "asctime", "taskName"}
_EXCEPTION_FORMATTER = logging.Formatter()


def _formatted_message(record: logging.LogRecord, redactor: Redactor) -> str:
    message = str(record.msg)
    if not record.args:
        return message
    # Arguments are redacted structurally first so that a dict logged with "%s" loses
    # its password field even when that password was never learnt. If the redacted
    # arguments no longer fit the format, the originals are tried (the text is redacted
    # by value afterwards either way); if neither fits, the arguments are dropped rather
    # than letting logging's error handler print them.
    for args in (redactor.redact(record.args), record.args):
        try:
            return message % args
        except (TypeError, ValueError, KeyError):
            continue
    return f"{message} [log arguments dropped: they do not match the format]"


def redact_record(record: logging.LogRecord, redactor: Redactor | None = None) -> None:
    """Redact a log record in place: message, arguments, exception, stack and extras.

    The message is formatted here and ``args`` emptied, so no handler can format the
    plaintext again. The exception is rendered to (redacted) ``exc_text`` and
    ``exc_info`` dropped, because handlers that render ``exc_info`` themselves (JSON or
    OpenTelemetry log handlers) would otherwise print the exception's message unmasked.
    Running it twice on a record is harmless.
    """
    if redactor is None:
        redactor = default_redactor()
    record.msg = redactor.redact_text(_formatted_message(record, redactor))
    record.args = ()
    if hasattr(record, "message"):  # a formatter already ran (another handler)
        record.message = record.msg
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redactor.redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor.redact_text(record.stack_info)
    for name, value in list(vars(record).items()):
        if name not in _STANDARD_RECORD_ATTRS:
            setattr(record, name, redactor.redact_field(name, value))


class RedactingFilter(logging.Filter):
    """A filter that redacts each record (see :func:`redact_record`) and lets it through.

    On a logger it sees only records logged on that very logger (logging does not run
    ancestors' filters on propagated records); on a handler it sees everything that
    handler emits. :func:`install_log_redaction` puts it in both places.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor

    @property
    def redactor(self) -> Redactor:
        return default_redactor() if self._redactor is None else self._redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redactor)
        return True


def install_log_redaction(
    logger: logging.Logger | None = None, *, redactor: Redactor | None = None
) -> RedactingFilter:
    """Redact everything ``logger`` (default: the root logger) and its handlers emit.

    For the root logger the log record factory is wrapped as well, so records from every
    logger are redacted when they are created, before any handler - including ones added
    later, such as a telemetry log exporter - can see them. ``extra=`` fields are set
    after the factory runs, so they are redacted by the handler filters installed here;
    a handler added later should get ``RedactingFilter()`` too. Idempotent.
    """
    target = logger or logging.getLogger()
    existing = [f for f in target.filters if isinstance(f, RedactingFilter)]
    redacting = existing[0] if existing else RedactingFilter(redactor)
    if not existing:
        target.addFilter(redacting)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    if logger is None:
        _wrap_record_factory(redacting)
    return redacting


def _wrap_record_factory(redacting: RedactingFilter) -> None:
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        redacting.filter(record)
        return record

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)

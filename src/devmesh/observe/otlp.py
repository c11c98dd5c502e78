"""OTLP/HTTP protobuf without the generated classes: a small protobuf writer for the proxy's spans, and
the POST that sends them (`RequestTracer`, devmesh.observe.tracing, is the one user).

The SDK's OTLPSpanExporter builds a protobuf object per span, attribute and value and serializes them:
~40 to 50 us a span, on a thread that takes the GIL from the proxy's event loop. devmesh's spans have one
fixed shape (ids, name, kind, times, string and int attributes, a status), so they are written straight
to the wire format here, with the resource and the scope encoded once: a few us a span. The tests decode
what this writes with the official classes (opentelemetry-proto) and compare it with what the SDK's
encoder (`encode_spans`) makes of the same span.

Wire format: https://protobuf.dev/programming-guides/encoding/; the messages are opentelemetry-proto's
collector/trace/v1 ExportTraceServiceRequest, trace/v1, common/v1 and resource/v1.

The sender honours the standard OTLP exporter variables that matter for a local collector:
OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS, ..._COMPRESSION (gzip, deflate),
..._CERTIFICATE, ..._CLIENT_CERTIFICATE and ..._CLIENT_KEY for https. The endpoint and the timeout are
devmesh's (`[observe] otlp`, EXPORT_TIMEOUT_S), as they were with OTLPSpanExporter; HTTP(S)_PROXY is not
used (a collector is on this machine, or reached directly).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import math
import os
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from devmesh import __version__

if TYPE_CHECKING:  # imported without the `otel` extra: only the sender needs opentelemetry, when made
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import Attributes, AttributeValue

_logger = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"

# Span.kind (trace/v1 Span.SpanKind)
KIND_INTERNAL = 1
KIND_SERVER = 2

# Span.flags (trace/v1 SpanFlags), as the SDK's encoder sets them: whether the parent is known to be
# remote, and if it is. (The SDK leaves the W3C trace flags, bits 0-7, out; so does this writer.)
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

# -- the protobuf wire format -------------------------------------------------------------------------

_BYTE = tuple(bytes((n,)) for n in range(128))  # a varint below 128 is that one byte
_DOUBLE = struct.Struct("<d")
_TIMES = struct.Struct("<BQBQ")  # Span.start_time_unix_nano (7) and end_time_unix_nano (8): fixed64
_INT64 = 1 << 64


def varint(value: int) -> bytes:
    """An unsigned varint; a negative int64 as its two's complement (ten bytes), as protobuf does."""
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} is out of int64 range")
        value += _INT64
    elif value >= _INT64:
        raise ValueError(f"{value} is out of uint64 range")
    if value < 0x80:
        return _BYTE[value]
    if value < 0x4000:  # sizes and ids: two or three bytes, without the loop
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message): its key, the payload's length, the payload."""
    size = len(payload)
    return key + (_BYTE[size] if size < 0x80 else varint(size)) + payload


# Keys of the fields written here: field number << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited,
# 5 fixed32), a varint.
_F1 = b"\x0a"  # field 1, length-delimited: ExportTraceServiceRequest.resource_spans, *.resource,
#   *.scope, InstrumentationScope.name, Resource.attributes, KeyValue.key, AnyValue.string_value, ...
_F2 = b"\x12"  # field 2, length-delimited: *.scope_spans, ScopeSpans.spans, Span.span_id, KeyValue.value, ...
_F3 = b"\x1a"  # field 3, length-delimited: *.schema_url, InstrumentationScope.attributes
_SPAN_NAME = b"\x2a"  # Span.name (5)
_SPAN_ATTRIBUTE = b"\x4a"  # Span.attributes (9)
# Span.flags (16), fixed32 (its key is the varint 0x85 0x01)
_FLAGS_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # also a root span's
_FLAGS_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_ANY_BOOL = b"\x10"  # AnyValue.bool_value (2)
_ANY_INT = b"\x18"  # AnyValue.int_value (3)
_ANY_DOUBLE = b"\x21"  # AnyValue.double_value (4)
_ANY_ARRAY = b"\x2a"  # AnyValue.array_value (5)
_ANY_BYTES = b"\x3a"  # AnyValue.bytes_value (7)

_STATUS_UNSET = b"\x7a\x00"  # Span.status (15): an empty Status, as the SDK writes it (code UNSET)
_STATUS_ERROR = b"\x7a\x02\x18\x02"  # Span.status: Status.code (3) = STATUS_CODE_ERROR


def any_value(value: AttributeValue | None) -> bytes:
    """An AnyValue message, for the SDK's attribute value types (and None: an empty AnyValue)."""
    if value is None:
        return b""
    if isinstance(value, bool):  # before int: a bool is an int
        return _ANY_BOOL + _BYTE[value]
    if isinstance(value, str):
        return delimited(_F1, value.encode())
    if isinstance(value, int):
        return _ANY_INT + varint(value)
    if isinstance(value, float):
        return _ANY_DOUBLE + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return delimited(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        # ArrayValue.values (1): one AnyValue each
        return delimited(_ANY_ARRAY, b"".join(delimited(_F1, any_value(item)) for item in value))
    raise TypeError(f"an attribute value of type {type(value).__name__}")


def key_value(key: str, value: AttributeValue | None) -> bytes:
    """A KeyValue message."""
    return (delimited(_F1, key.encode()) if key else b"") + delimited(_F2, any_value(value))


def _attributes(key: bytes, attributes: Attributes) -> bytes:
    """A message's repeated KeyValue field `key`, from the SDK's attributes."""
    return b"".join(delimited(key, key_value(name, value)) for name, value in (attributes or {}).items())


def encode_resource(resource: Resource) -> bytes:
    """A Resource message: its attributes (Resource.attributes, field 1)."""
    return _attributes(_F1, resource.attributes)


def encode_scope(scope: InstrumentationScope) -> bytes:
    """An InstrumentationScope message: name (1), version (2), attributes (3)."""
    return (
        (delimited(_F1, scope.name.encode()) if scope.name else b"")
        + (delimited(_F2, scope.version.encode()) if scope.version else b"")
        + _attributes(_F3, scope.attributes)
    )


# -- spans ---------------------------------------------------------------------------------------------


def attribute_key(key: str) -> bytes:
    """KeyValue.key, encoded once for `string_attribute` and `int_attribute`."""
    return delimited(_F1, key.encode())


def string_attribute(key: bytes, value: str) -> bytes:
    """A Span.attributes field: KeyValue{key, AnyValue{string_value}}; `key` from `attribute_key`."""
    data = value.encode()
    size = len(data)
    if size < 0x80 - 4 - len(key):  # every length fits in one byte: the common case, written at once
        return b"".join(
            (_SPAN_ATTRIBUTE, _BYTE[len(key) + size + 4], key, _F2, _BYTE[size + 2], _F1, _BYTE[size], data)
        )
    return delimited(_SPAN_ATTRIBUTE, key + delimited(_F2, delimited(_F1, data)))


def int_attribute(key: bytes, value: int) -> bytes:
    """A Span.attributes field: KeyValue{key, AnyValue{int_value}} (int64)."""
    number = varint(value)
    size = len(number)
    if size + len(key) < 0x80 - 3:
        return b"".join(
            (_SPAN_ATTRIBUTE, _BYTE[len(key) + size + 3], key, _F2, _BYTE[size + 1], _ANY_INT, number)
        )
    return delimited(_SPAN_ATTRIBUTE, key + delimited(_F2, _ANY_INT + number))


def span_name(name: str) -> bytes:
    """Span.name (left out when empty, as protobuf leaves out a default value)."""
    return delimited(_SPAN_NAME, name.encode()) if name else b""


def span_kind(kind: int) -> bytes:
    """Span.kind: KIND_SERVER, ..."""
    return b"\x30" + varint(kind)


def span_status(*, error: bool) -> bytes:
    """Span.status: ERROR, or UNSET (an empty Status, as the SDK writes it), without a message."""
    return _STATUS_ERROR if error else _STATUS_UNSET


def encode_span(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes,
    *,
    remote_parent: bool,
    start_ns: int,
    end_ns: int,
    fields: bytes,
) -> bytes:
    """A Span message as the SDK's encoder writes a span without events, links or trace state: ids (16
    and 8 bytes; `parent_span_id` b"" for a root span), times, flags, and `fields`, the rest already
    written: `span_name`, `span_kind`, `span_status` and the attributes (`string_attribute`,
    `int_attribute`). The fields of a message may come in any order (the entries of a repeated one keep
    theirs), so what many spans share can be written once."""
    return b"".join(
        (
            b"\x0a\x10",  # trace_id (1), 16 bytes
            trace_id,
            b"\x12\x08",  # span_id (2), 8 bytes
            span_id,
            b"\x22\x08" + parent_span_id if parent_span_id else b"",  # parent_span_id (4)
            _TIMES.pack(0x39, start_ns, 0x41, end_ns),
            _FLAGS_REMOTE_PARENT if parent_span_id and remote_parent else _FLAGS_LOCAL_PARENT,
            fields,
        )
    )


class RequestEncoder:
    """ExportTraceServiceRequest bodies for spans of one resource and one instrumentation scope, whose
    messages are encoded once, here."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._resource = delimited(_F1, encode_resource(resource))  # ResourceSpans.resource (1)
        self._resource_schema = delimited(_F3, resource.schema_url.encode()) if resource.schema_url else b""
        self._scope = delimited(_F1, encode_scope(scope))  # ScopeSpans.scope (1)
        self._scope_schema = delimited(_F3, scope.schema_url.encode()) if scope.schema_url else b""

    def encode(self, spans: Sequence[bytes]) -> bytes:
        """The request, from Span messages (`encode_span`)."""
        scope_spans = b"".join(
            [self._scope, *[delimited(_F2, span) for span in spans], self._scope_schema]
        )  # ScopeSpans.spans (2)
        resource_spans = b"".join(
            (self._resource, delimited(_F2, scope_spans), self._resource_schema)
        )  # ResourceSpans.scope_spans (2)
        return delimited(_F1, resource_spans)  # ExportTraceServiceRequest.resource_spans (1)


# -- the POST --------------------------------------------------------------------------------------------

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})  # as the OTLP/HTTP spec (and the SDK's exporter) say
FIRST_BACKOFF_S = 0.5  # then 1, 2, ... (+-20%), while the export's deadline allows


class OtlpHttpSender:
    """POSTs ExportTraceServiceRequest bodies to a collector's traces URL over one kept-alive connection.

    `send` blocks its caller (the exporter's thread) for at most `timeout` seconds, retries included: a
    refused or dropped connection and the statuses the OTLP/HTTP spec calls retryable (429, 502, 503,
    504) are retried after a backoff (Retry-After when the collector sends one); anything else fails the
    batch at once. `abort`, from another thread, ends a `send` in flight.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an OTLP/HTTP endpoint is an http:// or https:// URL, not {url!r}")
        self.url = url
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls = _tls_context() if parts.scheme == "https" else None
        found = _env("COMPRESSION") if compression is None else compression
        self._compression = found.strip().lower() or "none"
        if self._compression not in ("none", "gzip", "deflate"):
            _logger.warning("OTLP compression %r is not supported: sending uncompressed", found)
            self._compression = "none"
        # Lower-case names, as parse_env_headers gives them: a name set twice is sent once.
        self._headers = {"content-type": PROTOBUF, "user-agent": f"devmesh/{__version__}"}
        if self._compression != "none":
            self._headers["content-encoding"] = self._compression
        from opentelemetry.util.re import parse_env_headers

        self._headers.update(parse_env_headers(_env("HEADERS"), liberal=True))
        self._headers.update({name.lower(): value for name, value in (headers or {}).items()})
        self._connection: http.client.HTTPConnection | None = None
        self._aborted = threading.Event()
        self._failing = False  # the last send failed: the next failure is not logged as a warning again

    def send(self, body: bytes) -> bool:
        """One export request; True when the collector took it."""
        if self._compression == "gzip":
            body = gzip.compress(body, compresslevel=6, mtime=0)
        elif self._compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        retry = 0
        while not self._aborted.is_set():
            reused = self._connection is not None
            problem: str
            try:
                status, retry_after = self._post(body, deadline - time.monotonic())
            except TimeoutError:
                self._disconnect()
                problem, retryable, retry_after = f"no answer in {self.timeout:g}s", False, None
            except (OSError, http.client.HTTPException) as error:
                self._disconnect()
                if reused and not self._aborted.is_set():
                    continue  # a kept-alive connection the collector had closed: once more, on a new one
                problem, retryable, retry_after = f"{type(error).__name__}: {error}", True, None
            else:
                if 200 <= status < 300:
                    if self._failing:
                        _logger.info("OTLP export to %s works again", self.url)
                        self._failing = False
                    return True
                problem, retryable = f"HTTP {status}", status in RETRYABLE_STATUS
            backoff = retry_after if retry_after is not None else _backoff(retry)
            if not retryable or time.monotonic() + backoff >= deadline or self._aborted.wait(backoff):
                self._failed(problem)
                return False
            retry += 1
        return False

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self) -> None:
        """End a `send` in flight (its connection included) and refuse any later one."""
        self._aborted.set()
        connection = self._connection
        sock = connection.sock if connection is not None else None  # read once: the sender may close it
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._disconnect()

    def _post(self, body: bytes, timeout: float) -> tuple[int, float | None]:
        if timeout <= 0:
            raise TimeoutError
        connection = self._connection
        if connection is None:
            if self._tls is not None:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request("POST", self._target, body, self._headers)
        response = connection.getresponse()
        response.read()  # the answer (an ExportTraceServiceResponse, maybe a partial success) is not used
        if response.will_close:
            self._disconnect()
        return response.status, _retry_after(response.getheader("Retry-After"))

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _failed(self, problem: str) -> None:
        log = _logger.debug if self._failing else _logger.warning
        log("OTLP export to %s failed (%s): spans dropped", self.url, problem)
        self._failing = True


def _backoff(retry: int) -> float:
    return FIRST_BACKOFF_S * (1 << retry) * random.uniform(0.8, 1.2)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by collectors: ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _env(name: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>, else ""."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}", ""
    )


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_env("CERTIFICATE") or None)
    certificate = _env("CLIENT_CERTIFICATE")
    if certificate:
        context.load_cert_chain(certificate, _env("CLIENT_KEY") or None)
    return context

#!/usr/bin/env python3
"""Emulator of the Consul agent HTTP API, a test fixture for the sidecar.

No Consul binary can be installed on the build machines, so the sidecar's
Consul client is tested against this emulator. It follows
/work/shared/reference/consul-http-api.md and the behaviour of Consul's own
agent (Community Edition, 1.x): a client that works here must work unchanged
against a real agent, so the emulator copies Consul's status codes, plain text
error bodies, JSON shapes, blocking-query semantics and check behaviour, and
is strict where Consul is strict (e.g. unknown JSON fields in a registration).

Only the Python 3 standard library is needed. gRPC health checks use grpcio
(Debian python3-grpcio) when it is importable; without it a gRPC check stays
critical with an output that says so. Connect certificates are made with the
`openssl` command line tool.

Run it:
    python3 tests/consul/consul_emulator.py --http 127.0.0.1:8500
    python3 tests/consul/consul_emulator.py --http 127.0.0.1:0 --port-file /tmp/p
or use it in-process:
    emu = ConsulEmulator(); port = emu.start(); ...; emu.stop()

Besides the agent API (/v1/...), a control API that a real agent does not
have lives under /_emulator/ (see CONTROL API below and README.md next to this
file); every control is also a Python method of ConsulEmulator.
"""

import argparse
import base64
import datetime
import email.utils
import gzip
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

CONSUL_VERSION = "1.20.2"
CONSUL_REVISION = "33e5727a"
NS = 1
US = 1000
MS = 1000 * US
SEC = 1000 * MS
MINUTE = 60 * SEC
HOUR = 60 * MINUTE

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
VALID_STATUSES = (PASSING, WARNING, CRITICAL)
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
DEFAULT_OUTPUT_MAX = 4096  # checks.DefaultBufSize
HTTP_CHECK_USER_AGENT = "Consul Health Check"


# ---------------------------------------------------------------------------
# Go compatibility helpers: durations, quoting, JSON output, JSON decoding.
# ---------------------------------------------------------------------------

def go_quote(s):
    """strconv.Quote-like quoting used in Go error messages."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_DURATION_UNITS = {"ns": NS, "us": US, "\u00b5s": US, "\u03bcs": US, "ms": MS,
                   "s": SEC, "m": MINUTE, "h": HOUR}
_DIGITS = "0123456789"


def parse_go_duration(text):
    """time.ParseDuration: returns nanoseconds or raises ValueError with Go's text."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError("time: invalid duration " + go_quote(orig))
    total = 0
    while s:
        if not (s[0] == "." or s[0] in _DIGITS):
            raise ValueError("time: invalid duration " + go_quote(orig))
        i = 0
        while i < len(s) and s[i] in _DIGITS:
            i += 1
        whole_txt, s = s[:i], s[i:]
        pre = i > 0
        frac_txt = ""
        post = False
        if s.startswith("."):
            s = s[1:]
            i = 0
            while i < len(s) and s[i] in _DIGITS:
                i += 1
            frac_txt, s = s[:i], s[i:]
            post = i > 0
        if not pre and not post:
            raise ValueError("time: invalid duration " + go_quote(orig))
        i = 0
        while i < len(s) and s[i] != "." and s[i] not in _DIGITS:
            i += 1
        if i == 0:
            raise ValueError("time: missing unit in duration " + go_quote(orig))
        unit_txt, s = s[:i], s[i:]
        unit = _DURATION_UNITS.get(unit_txt)
        if unit is None:
            raise ValueError("time: unknown unit %s in duration %s" % (go_quote(unit_txt), go_quote(orig)))
        v = int(whole_txt or "0") * unit
        if frac_txt:
            v += int(frac_txt) * unit // (10 ** len(frac_txt))
        total += v
        if total > (1 << 63) - 1:
            raise ValueError("time: invalid duration " + go_quote(orig))
    return -total if neg else total


def _fmt_frac(v, unit):
    whole, frac = divmod(v, unit)
    if not frac:
        return str(whole)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return "%d.%s" % (whole, digits)


def format_go_duration(ns):
    """time.Duration.String()."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = abs(int(ns))
    if u < SEC:
        if u < US:
            s = "%dns" % u
        elif u < MS:
            s = _fmt_frac(u, US) + "\u00b5s"
        else:
            s = _fmt_frac(u, MS) + "ms"
    else:
        s = _fmt_frac(u % MINUTE, SEC) + "s"
        minutes = u // MINUTE
        if minutes:
            s = "%dm" % (minutes % 60) + s
            hours = minutes // 60
            if hours:
                s = "%dh" % hours + s
    return ("-" if neg else "") + s


def go_json(obj, pretty=False):
    """encoding/json output: compact, UTF-8, with <, >, & escaped like Go."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return text.encode("utf-8")


def go_time(ts):
    """time.Time JSON (RFC 3339, UTC)."""
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_go_bool(v):
    """strconv.ParseBool."""
    if v in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if v in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(v)


class DecodeError(Exception):
    """An encoding/json style error; str() is Go's message."""


def _json_kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def decode_json_body(body, top_type):
    """json.NewDecoder(body).Decode(&out): first JSON value only, Go-like errors."""
    text = body.decode("utf-8", errors="replace")
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise DecodeError("EOF")
    try:
        value, _end = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError as e:
        pos = e.pos
        if pos >= len(stripped.rstrip(" \t\r\n")):
            raise DecodeError("unexpected EOF")
        ch = stripped[pos]
        what = "looking for beginning of value"
        if e.msg.startswith("Expecting property name"):
            what = "looking for beginning of object key string"
        elif e.msg.startswith("Expecting ':'"):
            what = "after object key"
        elif e.msg.startswith("Expecting ',' delimiter"):
            what = "after object key:value pair" if "{" in stripped[:pos] else "after array element"
        raise DecodeError("invalid character %s %s" % (_go_char(ch), what))
    if value is not None and not isinstance(value, dict):
        raise DecodeError("json: cannot unmarshal %s into Go value of type %s" % (_json_kind(value), top_type))
    return value or {}


def _go_char(ch):
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    if ord(ch) < 0x20:
        return "'\\x%02x'" % ord(ch)
    return "'%s'" % ch


# Field specs for decode_struct: "string", "int", "bool", "[]string",
# "map[string]string", "map[string][]string", "duration", "any", "ignore",
# or a (struct_name, fields) tuple, or ["[]", (struct_name, fields)].
WEIGHTS_FIELDS = {"Passing": "int", "Warning": "int"}
SERVICE_ADDRESS_FIELDS = {"Address": "string", "Port": "int"}

CHECK_FIELDS = {
    "CheckID": "string", "Name": "string", "Status": "string", "Notes": "string",
    "ScriptArgs": "[]string", "HTTP": "string", "H2PING": "string", "H2PingUseTLS": "bool",
    "Header": "map[string][]string", "Method": "string", "Body": "string",
    "DisableRedirects": "bool", "TCP": "string", "TCPUseTLS": "bool", "UDP": "string",
    "Interval": "duration", "AliasNode": "string", "AliasService": "string",
    "DockerContainerID": "string", "Shell": "string", "GRPC": "string", "GRPCUseTLS": "bool",
    "OSService": "string", "TLSServerName": "string", "TLSSkipVerify": "bool",
    "Timeout": "duration", "TTL": "duration", "SuccessBeforePassing": "int",
    "FailuresBeforeWarning": "int", "FailuresBeforeCritical": "int",
    "ProxyHTTP": "string", "ProxyGRPC": "string",
    "DeregisterCriticalServiceAfter": "duration", "OutputMaxSize": "int",
    # snake_case and legacy aliases accepted by CheckType.UnmarshalJSON
    "args": ("alias", "ScriptArgs", "[]string"),
    "script_args": ("alias", "ScriptArgs", "[]string"),
    "deregister_critical_service_after": ("alias", "DeregisterCriticalServiceAfter", "duration"),
    "docker_container_id": ("alias", "DockerContainerID", "string"),
    "tls_server_name": ("alias", "TLSServerName", "string"),
    "tls_skip_verify": ("alias", "TLSSkipVerify", "bool"),
    "grpc_use_tls": ("alias", "GRPCUseTLS", "bool"),
    "h2ping_use_tls": ("alias", "H2PingUseTLS", "bool"),
    "ServiceID": "ignore", "service_id": "ignore",
}

SERVICE_FIELDS = {
    "Kind": "string", "ID": "string", "Name": "string", "Tags": "[]string",
    "Address": "string",
    "TaggedAddresses": ("map", ("ServiceAddress", SERVICE_ADDRESS_FIELDS)),
    "Meta": "map[string]string", "Port": "int", "SocketPath": "string",
    "Check": ("CheckType", CHECK_FIELDS), "Checks": ["[]", ("CheckType", CHECK_FIELDS)],
    "Weights": ("Weights", WEIGHTS_FIELDS), "Token": "string", "EnableTagOverride": "bool",
    "Proxy": "any", "Connect": "any", "Locality": "any", "Ports": "any",
    "enable_tag_override": ("alias", "EnableTagOverride", "bool"),
    "tagged_addresses": ("alias", "TaggedAddresses", ("map", ("ServiceAddress", SERVICE_ADDRESS_FIELDS))),
}

_GO_TYPE_NAMES = {"string": "string", "int": "int", "bool": "bool", "[]string": "[]string",
                  "map[string]string": "map[string]string",
                  "map[string][]string": "map[string][]string"}


def _field_lookup(fields, key):
    if key in fields:
        return key
    low = key.lower()
    for name in fields:
        if name.lower() == low:
            return name
    return None


def decode_struct(obj, struct_name, fields, strict, path=None):
    """Decode a JSON object like encoding/json into a struct: exact then
    case-insensitive key match, type errors with Go's wording, unknown fields
    refused when strict (Consul's lib.UnmarshalJSON disallows them)."""
    out = {}
    path = path or struct_name
    for key, value in obj.items():
        name = _field_lookup(fields, key)
        if name is None:
            if strict:
                raise DecodeError("json: unknown field " + go_quote(key))
            continue
        spec = fields[name]
        target = name
        if isinstance(spec, tuple) and spec[0] == "alias":
            target, spec = spec[1], spec[2]
        if spec == "ignore":
            continue
        decoded = _decode_value(value, spec, "%s.%s" % (path, target), strict)
        if decoded is not None or target not in out:
            out[target] = decoded
    return out


def _type_error(value, where, gotype):
    kind = _json_kind(value)
    if kind == "number":
        kind = "number " + json.dumps(value)
    return DecodeError("json: cannot unmarshal %s into Go struct field %s of type %s" % (kind, where, gotype))


def _decode_value(value, spec, where, strict):
    if value is None:
        return None
    if spec == "any":
        return value
    if spec == "duration":
        # CheckType keeps these as interface{}: strings are Go durations,
        # numbers are nanoseconds, anything else is silently ignored.
        if isinstance(value, str):
            try:
                return parse_go_duration(value)
            except ValueError as e:
                raise DecodeError(str(e))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        return None
    if spec == "string":
        if not isinstance(value, str):
            raise _type_error(value, where, "string")
        return value
    if spec == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, where, "bool")
        return value
    if spec == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, where, "int")
        if isinstance(value, float) and not value.is_integer():
            raise _type_error(value, where, "int")
        return int(value)
    if spec == "[]string":
        if not isinstance(value, list):
            raise _type_error(value, where, "[]string")
        return [_decode_value(v, "string", where, strict) or "" for v in value]
    if spec == "map[string]string":
        if not isinstance(value, dict):
            raise _type_error(value, where, "map[string]string")
        return {k: (_decode_value(v, "string", where, strict) or "") for k, v in value.items()}
    if spec == "map[string][]string":
        if not isinstance(value, dict):
            raise _type_error(value, where, "map[string][]string")
        return {k: (_decode_value(v, "[]string", where, strict) or []) for k, v in value.items()}
    if isinstance(spec, list) and spec[0] == "[]":
        sname, sfields = spec[1]
        if not isinstance(value, list):
            raise _type_error(value, where, "structs.%ss" % sname)
        items = []
        for v in value:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise _type_error(v, where, "structs." + sname)
            items.append(decode_struct(v, sname, sfields, strict, where))
        return items
    if isinstance(spec, tuple) and spec[0] == "map":
        sname, sfields = spec[1]
        if not isinstance(value, dict):
            raise _type_error(value, where, "map[string]structs." + sname)
        res = {}
        for k, v in value.items():
            if v is None:
                res[k] = {}
                continue
            if not isinstance(v, dict):
                raise _type_error(v, where, "structs." + sname)
            res[k] = decode_struct(v, sname, sfields, False, where)
        return res
    if isinstance(spec, tuple):
        sname, sfields = spec
        if not isinstance(value, dict):
            raise _type_error(value, where, "structs." + sname)
        return decode_struct(value, sname, sfields, strict, where)
    raise AssertionError("bad spec %r" % (spec,))


def ci_get(d, *names, default=None):
    """Case-insensitive lookup for the control API's JSON bodies."""
    if not isinstance(d, dict):
        return default
    for name in names:
        if name in d:
            return d[name]
    lows = {n.lower() for n in names}
    for k, v in d.items():
        if k.lower() in lows:
            return v
    return default


# ---------------------------------------------------------------------------
# Errors and responses
# ---------------------------------------------------------------------------

class APIError(Exception):
    """An HTTP error answered with a plain text body, like Consul's HTTPError."""

    def __init__(self, status, body="", headers=None):
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = list(headers or [])


class _Abort(Exception):
    """The connection must be dropped without an answer."""


class Response:
    __slots__ = ("status", "headers", "body", "gzip_ok")

    def __init__(self, status=200, body=b"", headers=None, gzip_ok=True):
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode("utf-8")
        self.headers = list(headers or [])
        self.gzip_ok = gzip_ok

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def text_response(status, text, headers=None):
    hdrs = list(headers or [])
    if text:
        hdrs.append(("Content-Type", "text/plain; charset=utf-8"))
    return Response(status, text, hdrs)


class Request:
    """One HTTP request as the emulator sees it."""

    def __init__(self, method, raw_target, headers, body, remote, transport):
        self.method = method
        self.raw_target = raw_target
        target = raw_target
        m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(/.*)?$", target)
        if m:
            target = m.group(1) or "/"
        raw_path, _, self.query = target.partition("?")
        self.raw_path = raw_path
        self.path = urllib.parse.unquote(raw_path)
        self.args = urllib.parse.parse_qs(self.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.remote = remote
        self.transport = transport

    def q(self, name):
        vals = self.args.get(name)
        return vals[0] if vals else ""

    def has(self, name):
        return name in self.args

    def header(self, name):
        return self.headers.get(name, "") if self.headers is not None else ""


# ---------------------------------------------------------------------------
# ACLs
# ---------------------------------------------------------------------------

ACL_RESOURCES = ("service", "node", "agent", "key", "session", "event", "query", "operator", "mesh", "acl")


class Token:
    def __init__(self, secret, accessor=None, management=False, rules=None, description=""):
        self.secret = secret
        self.accessor = accessor or str(uuid.uuid4())
        self.management = management
        self.rules = rules or {}  # resource -> list of (name, is_prefix, level)
        self.description = description

    def to_json(self):
        return {"AccessorID": self.accessor, "SecretID": self.secret, "Description": self.description,
                "Management": self.management,
                "Rules": {res: [{"Name": n, "Prefix": p, "Access": lvl} for (n, p, lvl) in lst]
                          for res, lst in self.rules.items()}}


def parse_acl_rules(spec):
    """Rules for a token added through the control API.

    Accepted forms: a preset string ("management", "read-only", "write-all",
    "deny", "service:<name>" = Consul's service identity), Consul's JSON rule
    syntax ({"service_prefix": {"": {"policy": "read"}}, "service": {"web":
    "write"}}), or a list of {"Resource", "Name", "Prefix", "Access"}.
    Returns (management, rules)."""
    rules = {}

    def add(res, name, is_prefix, level):
        level = str(level).lower()
        if level not in ("read", "write", "deny", "list"):
            raise APIError(400, "invalid access level %r" % level)
        if level == "list":
            level = "read"
        rules.setdefault(res, []).append((name, is_prefix, level))

    if spec is None:
        return False, rules
    if isinstance(spec, str):
        p = spec.strip()
        low = p.lower()
        if low in ("management", "global-management", "root"):
            return True, rules
        if low in ("read-only", "readonly", "read"):
            for res in ("service", "node", "agent"):
                add(res, "", True, "read")
            return False, rules
        if low in ("write-all", "write"):
            for res in ("service", "node", "agent"):
                add(res, "", True, "write")
            return False, rules
        if low in ("deny", "none", ""):
            return False, rules
        if low.startswith("service:") or low.startswith("service-identity:"):
            name = p.split(":", 1)[1]
            add("service", name, False, "write")
            add("service", name + "-sidecar-proxy", False, "write")
            add("service", "", True, "read")
            add("node", "", True, "read")
            return False, rules
        raise APIError(400, "unknown ACL preset %r" % spec)
    if isinstance(spec, list):
        for r in spec:
            res = str(ci_get(r, "Resource", default="")).lower()
            if res.endswith("_prefix"):
                res, is_prefix = res[:-7], True
            else:
                is_prefix = bool(ci_get(r, "Prefix", default=False))
            add(res, ci_get(r, "Name", default="") or "", is_prefix,
                ci_get(r, "Access", "Policy", default="read"))
        return False, rules
    if isinstance(spec, dict):
        for key, val in spec.items():
            k = key.lower()
            is_prefix = k.endswith("_prefix")
            res = k[:-7] if is_prefix else k
            if res in ("operator", "mesh", "acl", "keyring", "peering") and isinstance(val, str):
                add(res, "", True, val)
                continue
            if not isinstance(val, dict):
                raise APIError(400, "bad rule for %r" % key)
            for name, lvl in val.items():
                if isinstance(lvl, dict):
                    lvl = ci_get(lvl, "policy", default="deny")
                add(res, name, is_prefix, lvl)
        return False, rules
    raise APIError(400, "bad ACL rules")


# ---------------------------------------------------------------------------
# Catalog model
# ---------------------------------------------------------------------------

class Node:
    def __init__(self, name, node_id, address, dc, meta=None, tagged=None, local=False):
        self.name = name
        self.id = node_id
        self.address = address
        self.dc = dc
        self.meta = dict(meta or {})
        self.tagged = dict(tagged or {})
        self.local = local
        self.services = {}  # service id -> Service
        self.checks = {}    # check id -> Check (node and service checks)
        self.create_index = 0
        self.modify_index = 0


class Service:
    def __init__(self):
        self.kind = ""
        self.id = ""
        self.name = ""
        self.tags = None
        self.address = ""
        self.tagged_addresses = {}
        self.meta = None
        self.port = 0
        self.socket_path = ""
        self.weights = {"Passing": 1, "Warning": 1}
        self.enable_tag_override = False
        self.proxy = None
        self.connect = None
        self.create_index = 0
        self.modify_index = 0
        self.local = False
        self.definition = None  # the decoded registration (local services)
        # Consul Enterprise scope (enterprise=True); the Community Edition has none
        self.partition = "default"
        self.namespace = "default"

    def fields(self):
        return (self.kind, self.id, self.name, tuple(self.tags or ()), self.tags is None, self.address,
                json.dumps(self.tagged_addresses, sort_keys=True), json.dumps(self.meta, sort_keys=True),
                self.port, self.socket_path, json.dumps(self.weights, sort_keys=True),
                self.enable_tag_override, json.dumps(self.proxy, sort_keys=True),
                json.dumps(self.connect, sort_keys=True))


class Check:
    def __init__(self):
        self.node = ""
        self.check_id = ""
        self.name = ""
        self.status = CRITICAL
        self.notes = ""
        self.output = ""          # the agent's local view
        self.catalog_output = ""  # what the servers have (output syncs are deferred)
        self.service_id = ""
        self.service_name = ""
        self.service_tags = []
        self.type = ""
        self.definition = {}      # decoded CheckType (local checks)
        self.interval = 0
        self.timeout = 0
        self.ttl = 0
        self.deregister_after = 0
        self.output_max = DEFAULT_OUTPUT_MAX
        self.create_index = 0
        self.modify_index = 0
        self.local = False
        self.critical_since = None
        self.ttl_deadline = None
        self.ttl_last_output = ""
        self.defer_deadline = None
        self.runner = None
        self.success_before_passing = 0
        self.failures_before_warning = 0
        self.failures_before_critical = 0
        self.success_counter = 0
        self.failure_counter = 0

    def def_key(self):
        return json.dumps(self.definition, sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------

class FaultRule:
    """One fault injection rule (see add_fault)."""

    def __init__(self, spec):
        self.id = str(ci_get(spec, "ID", default="") or uuid.uuid4().hex[:12])
        self.method = (ci_get(spec, "Method", default=None) or None)
        if self.method:
            self.method = self.method.upper()
        self.path = ci_get(spec, "Path", "PathPrefix", default=None)
        rx = ci_get(spec, "PathRegex", default=None)
        self.path_regex = re.compile(rx) if rx else None
        self.skip = int(ci_get(spec, "Skip", default=0) or 0)
        count = ci_get(spec, "Count", default=None)
        self.count = None if count is None else int(count)
        st = ci_get(spec, "Status", default=None)
        self.status = None if st is None else int(st)
        self.body = ci_get(spec, "Body", default=None)
        self.content_type = ci_get(spec, "ContentType", default=None)
        self.headers = dict(ci_get(spec, "Headers", default={}) or {})
        self.delay = float(ci_get(spec, "Delay", default=0) or 0)
        self.delay_after = float(ci_get(spec, "DelayAfter", default=0) or 0)
        self.drop = bool(ci_get(spec, "Drop", default=False))
        self.reset = bool(ci_get(spec, "Reset", default=False))
        self.hang = bool(ci_get(spec, "Hang", default=False))
        self.hits = 0
        if not (self.status is not None or self.delay or self.delay_after or self.drop or self.reset or self.hang):
            raise APIError(400, "fault needs one of Status, Delay, DelayAfter, Drop, Reset, Hang")

    def matches(self, req):
        if self.method and req.method != self.method:
            return False
        if self.path is not None and not req.path.startswith(self.path):
            return False
        if self.path_regex is not None and not self.path_regex.search(req.path):
            return False
        return True

    def to_json(self):
        return {"ID": self.id, "Method": self.method, "Path": self.path,
                "PathRegex": self.path_regex.pattern if self.path_regex else None,
                "Skip": self.skip, "Count": self.count, "Status": self.status, "Body": self.body,
                "Headers": self.headers, "Delay": self.delay, "DelayAfter": self.delay_after,
                "Drop": self.drop, "Reset": self.reset, "Hang": self.hang, "Hits": self.hits}


# ---------------------------------------------------------------------------
# Check probes (HTTP, TCP, gRPC), run on their own daemon threads.
# ---------------------------------------------------------------------------

def _effective_timeout(timeout_ns, interval_ns):
    """Consul: Timeout if 0 < Timeout < Interval, else Interval when < 10s, else 10s."""
    if 0 < timeout_ns < interval_ns:
        return timeout_ns / SEC
    if interval_ns < 10 * SEC:
        return interval_ns / SEC
    return 10.0


def _split_host_port(target):
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        return host, int(rest.lstrip(":"))
    host, _, port = target.rpartition(":")
    return host, int(port)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _http_probe(defn, interval_ns, timeout_ns, output_max):
    url = defn.get("HTTP", "")
    method = (defn.get("Method") or "GET").upper()
    op = method[:1] + method[1:].lower()
    timeout = _effective_timeout(timeout_ns, interval_ns)
    headers = {"User-Agent": HTTP_CHECK_USER_AGENT, "Accept": "text/plain, text/*, */*"}
    for k, vals in (defn.get("Header") or {}).items():
        if vals:
            headers[k] = ", ".join(vals)
    body = defn.get("Body") or None
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=headers)
    ctx = ssl.create_default_context()
    if defn.get("TLSSkipVerify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    handlers = [urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)]
    if defn.get("DisableRedirects"):
        handlers.append(_NoRedirect())
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + timeout
    try:
        try:
            resp = opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            resp = e
        code = resp.status if hasattr(resp, "status") and resp.status else resp.code
        reason = resp.reason or ""
        data = b""
        try:
            while time.monotonic() < deadline:
                chunk = resp.read(65536)
                if not chunk:
                    break
                data = (data + chunk)[-output_max:]  # circbuf keeps the tail
        except (OSError, ValueError):
            pass
        finally:
            try:
                resp.close()
            except Exception:
                pass
    except (socket.timeout, TimeoutError):
        return CRITICAL, '%s "%s": context deadline exceeded (Client.Timeout exceeded while awaiting headers)' % (op, url)
    except urllib.error.URLError as e:
        r = e.reason
        if isinstance(r, (socket.timeout, TimeoutError)):
            return CRITICAL, '%s "%s": context deadline exceeded (Client.Timeout exceeded while awaiting headers)' % (op, url)
        hostport = urllib.parse.urlsplit(url).netloc
        if isinstance(r, ConnectionRefusedError):
            return CRITICAL, '%s "%s": dial tcp %s: connect: connection refused' % (op, url, hostport)
        return CRITICAL, '%s "%s": %s' % (op, url, r)
    except (OSError, ValueError, http.client.HTTPException) as e:
        return CRITICAL, '%s "%s": %s' % (op, url, e)
    status_line = ("%d %s" % (code, reason)).strip()
    out = "HTTP %s %s: %s Output: %s" % (method, url, status_line, data.decode("utf-8", errors="replace"))
    if 200 <= code <= 299:
        return PASSING, out
    if code == 429:
        return WARNING, out
    return CRITICAL, out


def _tcp_probe(defn, interval_ns, timeout_ns):
    target = defn.get("TCP", "")
    timeout = _effective_timeout(timeout_ns, interval_ns)
    try:
        host, port = _split_host_port(target)
    except ValueError:
        return CRITICAL, "dial tcp: address %s: missing port in address" % target
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        s.close()
    except ConnectionRefusedError:
        return CRITICAL, "dial tcp %s: connect: connection refused" % target
    except (socket.timeout, TimeoutError):
        return CRITICAL, "dial tcp %s: i/o timeout" % target
    except OSError as e:
        return CRITICAL, "dial tcp %s: %s" % (target, e.strerror or e)
    return PASSING, "TCP connect %s: Success" % target


_GRPC_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _grpc_probe(defn, interval_ns, timeout_ns):
    target = defn.get("GRPC", "")
    try:
        import grpc  # noqa: lazily imported, optional (Debian python3-grpcio)
    except Exception:
        return CRITICAL, "gRPC check %s: unavailable in the emulator (grpcio not installed)" % target
    timeout = _effective_timeout(timeout_ns, interval_ns)
    addr, _, svc = target.partition("/")
    svc_b = svc.encode()
    request = (b"\x0a" + _pb_varint(len(svc_b)) + svc_b) if svc_b else b""
    try:
        if defn.get("GRPCUseTLS"):
            channel = grpc.secure_channel(addr, grpc.ssl_channel_credentials())
        else:
            channel = grpc.insecure_channel(addr)
        try:
            call = channel.unary_unary("/grpc.health.v1.Health/Check")
            raw = call(request, timeout=timeout)
        finally:
            channel.close()
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        cname = "".join(p.capitalize() for p in code.name.split("_")) if code else "Unknown"
        if cname == "DeadlineExceeded":
            cname = "DeadlineExceeded"
        details = e.details() if hasattr(e, "details") else str(e)
        return CRITICAL, "rpc error: code = %s desc = %s" % (cname, details)
    except Exception as e:  # pragma: no cover - defensive
        return CRITICAL, "gRPC check %s: %s" % (target, e)
    status = 0
    i = 0
    while i < len(raw):
        key = raw[i]
        i += 1
        if key == 0x08:
            val, shift = 0, 0
            while i < len(raw):
                b = raw[i]
                i += 1
                val |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            status = val
        else:
            break
    if status != 1:
        return CRITICAL, "gRPC %s serving status: %s" % (target, _GRPC_STATUS_NAMES.get(status, str(status)))
    return PASSING, "gRPC check %s: success" % target


class _CheckRunner(threading.Thread):
    def __init__(self, emu, check, stagger):
        super().__init__(daemon=True, name="consul-emu-check-%s" % check.check_id)
        self.emu = emu
        self.node = check.node
        self.check_id = check.check_id
        self.kind = check.type
        self.defn = dict(check.definition)
        self.interval = check.interval
        self.timeout = check.timeout
        self.output_max = check.output_max
        self.stagger = stagger
        self.stop_event = threading.Event()

    def stop(self):
        self.stop_event.set()

    def run(self):
        first = random.uniform(0, self.interval / SEC) if self.stagger else 0.0
        if self.stop_event.wait(first):
            return
        while not self.stop_event.is_set():
            try:
                if self.kind == "http":
                    status, output = _http_probe(self.defn, self.interval, self.timeout, self.output_max)
                elif self.kind == "tcp":
                    status, output = _tcp_probe(self.defn, self.interval, self.timeout)
                elif self.kind == "grpc":
                    status, output = _grpc_probe(self.defn, self.interval, self.timeout)
                else:
                    return
            except Exception as e:  # pragma: no cover - defensive
                status, output = CRITICAL, "emulator probe error: %s" % e
            if self.stop_event.is_set():
                return
            self.emu._runner_result(self, status, output)
            if self.stop_event.wait(self.interval / SEC):
                return


# ---------------------------------------------------------------------------
# Connect CA (openssl command line)
# ---------------------------------------------------------------------------

def _read_text(path):
    with open(path) as f:
        return f.read()


def _hex_colon(b):
    return ":".join("%02x" % x for x in b)


def _openssl_date(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%y%m%d%H%M%SZ")


class ConnectCA:
    """A built-in-CA lookalike: ECDSA P-256 roots and leaf certificates."""

    def __init__(self, trust_domain, datacenter):
        if not shutil.which("openssl"):
            raise APIError(500, "emulator: the openssl command is needed for Connect endpoints")
        self.trust_domain = trust_domain
        self.dc = datacenter
        self.dir = tempfile.mkdtemp(prefix="consul-emu-ca-")
        self.lock = threading.Lock()
        self.roots = []  # dicts: ID, Name, SerialNumber, SigningKeyID, NotBefore, NotAfter, RootCert, Active, RotatedOutAt, key, index
        os.makedirs(os.path.join(self.dir, "newcerts"))
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "index.txt.attr"), "w") as f:
            f.write("unique_subject = no\n")
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("%016X\n" % random.getrandbits(62))
        with open(os.path.join(self.dir, "req.cnf"), "w") as f:
            f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = placeholder\n"
                    "[v3_ca]\nbasicConstraints = critical, CA:TRUE\n"
                    "keyUsage = critical, digitalSignature, keyCertSign, cRLSign\n"
                    "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
                    "subjectAltName = URI:spiffe://%s\n" % trust_domain)
        with open(os.path.join(self.dir, "ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = emu\n[emu]\ndir = %s\ndatabase = $dir/index.txt\n"
                    "new_certs_dir = $dir/newcerts\nserial = $dir/serial\ndefault_md = sha256\n"
                    "policy = pol\nunique_subject = no\nemail_in_dn = no\ncopy_extensions = none\n"
                    "[pol]\ncommonName = supplied\n" % self.dir)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _openssl(self, *args):
        p = subprocess.run(["openssl"] + list(args), cwd=self.dir, capture_output=True, timeout=60)
        if p.returncode != 0:
            raise APIError(500, "emulator: openssl %s failed: %s" % (args[0], p.stderr.decode(errors="replace")))
        return p.stdout

    def _cert_info(self, pem_path):
        out = self._openssl("x509", "-in", pem_path, "-noout", "-serial", "-startdate", "-enddate",
                            "-ext", "subjectKeyIdentifier").decode()
        info = {}
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("serial="):
                info["serial"] = int(line.split("=", 1)[1], 16)
            elif line.startswith("notBefore="):
                info["not_before"] = self._parse_date(line.split("=", 1)[1])
            elif line.startswith("notAfter="):
                info["not_after"] = self._parse_date(line.split("=", 1)[1])
            elif "Subject Key Identifier" in line and i + 1 < len(lines):
                info["ski"] = lines[i + 1].strip().lower()
        return info

    @staticmethod
    def _parse_date(s):
        parts = s.split()
        dt = datetime.datetime.strptime(" ".join(parts[:4]), "%b %d %H:%M:%S %Y")
        return dt.replace(tzinfo=datetime.timezone.utc).timestamp()

    def new_root(self, index):
        with self.lock:
            n = len(self.roots) + 1
            key, crt = "root%d.key" % n, "root%d.pem" % n
            self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
            serial = random.getrandbits(62) | 1
            cn = "pri-%s.consul.ca.%s.consul" % (uuid.uuid4().hex[:7], self.trust_domain.split(".")[0][:8])
            self._openssl("req", "-x509", "-new", "-key", key, "-sha256", "-days", "3650",
                          "-subj", "/CN=" + cn, "-config", "req.cnf", "-extensions", "v3_ca",
                          "-set_serial", str(serial), "-out", crt)
            pem = _read_text(os.path.join(self.dir, crt))
            info = self._cert_info(crt)
            der = ssl.PEM_cert_to_DER_cert(pem)
            now = time.time()
            for r in self.roots:
                if r["Active"]:
                    r["Active"] = False
                    r["RotatedOutAt"] = now
            root = {"ID": _hex_colon(hashlib.sha256(der).digest()), "Name": "Consul CA Primary Cert",
                    "SerialNumber": info.get("serial", serial), "SigningKeyID": info.get("ski", ""),
                    "NotBefore": info.get("not_before", now), "NotAfter": info.get("not_after", now + 3650 * 86400),
                    "RootCert": pem, "Active": True, "RotatedOutAt": None, "key": key, "crt": crt,
                    "index": index}
            self.roots.append(root)
            return root

    def active(self):
        for r in self.roots:
            if r["Active"]:
                return r
        return None

    def issue_leaf(self, service, ttl_s):
        with self.lock:
            root = [r for r in self.roots if r["Active"]][0]
            tag = uuid.uuid4().hex[:10]
            key, csr, crt, ext = ("leaf-%s.%s" % (tag, x) for x in ("key", "csr", "pem", "ext"))
            uri = "spiffe://%s/ns/default/dc/%s/svc/%s" % (self.trust_domain, self.dc, service)
            with open(os.path.join(self.dir, ext), "w") as f:
                f.write("[leaf]\nbasicConstraints = critical, CA:FALSE\n"
                        "keyUsage = critical, digitalSignature, keyEncipherment, keyAgreement\n"
                        "extendedKeyUsage = serverAuth, clientAuth\nsubjectKeyIdentifier = hash\n"
                        "authorityKeyIdentifier = keyid\nsubjectAltName = URI:%s\n" % uri)
            self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
            cn = re.sub(r"[^A-Za-z0-9.-]", "-", service) or "service"
            self._openssl("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-config", "req.cnf", "-out", csr)
            now = time.time()
            valid_after = now - 60  # Consul backdates leaf certificates by a minute
            valid_before = now + ttl_s
            self._openssl("ca", "-config", "ca.cnf", "-batch", "-notext", "-in", csr, "-out", crt,
                          "-cert", root["crt"], "-keyfile", root["key"], "-startdate", _openssl_date(valid_after),
                          "-enddate", _openssl_date(valid_before), "-extfile", ext, "-extensions", "leaf",
                          "-md", "sha256")
            info = self._cert_info(crt)
            cert_pem = _read_text(os.path.join(self.dir, crt))
            key_pem = _read_text(os.path.join(self.dir, key))
            for fn in (csr, ext):
                try:
                    os.unlink(os.path.join(self.dir, fn))
                except OSError:
                    pass
            serial = info.get("serial", 0)
            serial_bytes = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
            return {"SerialNumber": _hex_colon(serial_bytes), "CertPEM": cert_pem, "PrivateKeyPEM": key_pem,
                    "Service": service, "ServiceURI": uri,
                    "ValidAfter": info.get("not_before", valid_after),
                    "ValidBefore": info.get("not_after", valid_before),
                    "root_id": root["ID"], "issued_at": now}


# ---------------------------------------------------------------------------
# HTTP servers
# ---------------------------------------------------------------------------

class _HTTPHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "consul-emulator"
    sys_version = ""

    def setup(self):
        super().setup()
        self.server.emu._track_conn(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.emu._track_conn(self.connection, False)

    def log_message(self, fmt, *args):
        if self.server.emu.verbose:
            sys.stderr.write("consul-emulator: %s\n" % (fmt % args))

    def _any(self):
        self.server.emu._serve(self)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _any


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, emu, family, control_only=False):
        self.address_family = family
        self.emu = emu
        self.control_only = control_only
        self.transport = "tcp"
        super().__init__(addr, _HTTPHandler)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, path, emu):
        self.emu = emu
        self.control_only = False
        self.transport = "unix"
        super().__init__(path, _HTTPHandler)


def parse_listen_addr(text):
    t = text.strip()
    for prefix in ("http://", "tcp://"):
        if t.startswith(prefix):
            t = t[len(prefix):]
    t = t.rstrip("/")
    if t.startswith("["):
        host, _, port = t[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = t.rpartition(":")
    if not host:
        host = "127.0.0.1"
    return host, int(port or 0)


# ---------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------

ROUTES = [
    # (Go ServeMux pattern, allowed methods, handler name)
    ("/v1/agent/self", ("GET",), "_h_agent_self"),
    ("/v1/agent/services", ("GET",), "_h_agent_services"),
    ("/v1/agent/service/", ("GET",), "_h_agent_service"),
    ("/v1/agent/checks", ("GET",), "_h_agent_checks"),
    ("/v1/agent/members", ("GET",), "_h_agent_members"),
    ("/v1/agent/service/register", ("PUT",), "_h_register"),
    ("/v1/agent/service/deregister/", ("PUT",), "_h_deregister"),
    ("/v1/agent/check/pass/", ("PUT",), "_h_check_pass"),
    ("/v1/agent/check/warn/", ("PUT",), "_h_check_warn"),
    ("/v1/agent/check/fail/", ("PUT",), "_h_check_fail"),
    ("/v1/agent/check/update/", ("PUT",), "_h_check_update"),
    ("/v1/agent/connect/ca/roots", ("GET",), "_h_ca_roots"),
    ("/v1/agent/connect/ca/leaf/", ("GET",), "_h_ca_leaf"),
    ("/v1/agent/connect/authorize", ("POST",), "_h_authorize"),
    ("/v1/health/service/", ("GET",), "_h_health_service"),
    ("/v1/catalog/datacenters", ("GET",), "_h_catalog_datacenters"),
    ("/v1/status/leader", ("GET",), "_h_status_leader"),
    ("/v1/status/peers", ("GET",), "_h_status_peers"),
]
_EXACT_ROUTES = {p: (m, h) for p, m, h in ROUTES if not p.endswith("/")}
_SUBTREE_ROUTES = sorted(((p, m, h) for p, m, h in ROUTES if p.endswith("/")), key=lambda r: -len(r[0]))


class ConsulEmulator:
    """In-process Consul agent emulator.

    emu = ConsulEmulator(http_addr="127.0.0.1:0"); port = emu.start()
    ... emu.url ... emu.register_instance("payments", port=9000) ...
    emu.stop()
    """

    def __init__(self, http_addr="127.0.0.1:0", unix_path=None, acl_token=None, acl_default_policy="deny",
                 datacenter="dc1", node_name="node1", node_address="127.0.0.1", state_file=None,
                 reaper_interval=30.0, min_deregister_after=60.0, min_check_interval=1.0,
                 check_update_interval=300.0, check_stagger=True, default_wait=300.0, max_wait=600.0,
                 leaf_ttl=72 * 3600.0, control_http=None, initial_index=None, verbose=False,
                 log_limit=20000, extra_datacenters=(), enterprise=False):
        self.http_addr = http_addr
        self.unix_path = unix_path
        self.control_http = control_http
        self.datacenter = datacenter
        self.node_name = node_name
        self.node_address = node_address
        self.state_file = state_file
        self.reaper_interval = float(reaper_interval)
        self.min_deregister_after = float(min_deregister_after)
        self.min_check_interval = float(min_check_interval)
        self.check_update_interval = float(check_update_interval)
        self.check_stagger = check_stagger
        self.default_wait = float(default_wait)
        self.max_wait = float(max_wait)
        self.leaf_ttl = float(leaf_ttl)
        self.verbose = verbose
        self.log_limit = log_limit
        # enterprise=False: the Community Edition (400 to any non-empty ns or
        # partition). enterprise=True: ns / partition (query or X-Consul-
        # Namespace / X-Consul-Partition header, "default" when absent) are
        # accepted; services registered through the agent or register_instance
        # belong to one namespace and partition, the health endpoint lists only
        # those of the namespace asked, and the agent endpoints on a service or
        # its checks (GET /v1/agent/service/<id>, deregister, TTL updates)
        # answer 404 for one of another namespace. Not modelled: namespaces
        # and partitions need not be created first, a service ID is unique per
        # agent (not per namespace), namespace ACL rules, names are not
        # validated.
        self.enterprise = bool(enterprise)

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stop_event = threading.Event()
        self._stopping = False
        self._epoch = 0          # bumped when connections are cut
        self._release_gen = 0    # bumped to answer every blocked query now

        # raft-like indexes
        self._index = 0
        self._tbl = {"nodes": 0, "services": 0, "checks": 0}
        self._svc_idx = {}       # (dc, lower service name) -> index
        self._extinction = {}    # dc -> index
        self._datacenters = {datacenter} | set(extra_datacenters)
        self._leader = "127.0.0.1:8300"

        self._nodes = {}         # (dc, node name) -> Node
        self.node_id = str(uuid.uuid4())
        self.cluster_id = str(uuid.uuid4())
        self._ext_counter = 0

        # ACLs
        self.acl_enabled = acl_token is not None
        self.acl_default_policy = acl_default_policy
        self._tokens = {}
        if self.acl_enabled:
            self._tokens[acl_token] = Token(acl_token, management=True, description="initial management token")

        # Connect
        self._ca = None
        self._roots_index = 0
        self._leaves = {}        # service -> leaf dict (with index, renew_at)
        self._intentions = []
        self._intention_default = None

        # faults, request log
        self._fault_lock = threading.Lock()
        self._faults = []
        self._log_lock = threading.Lock()
        self._log_cond = threading.Condition(self._log_lock)
        self._log = []
        self._log_seq = 0
        self._cache_seen = {}

        # servers
        self._servers = []       # (server, thread)
        self._control_server = None
        self._conns = set()
        self._conn_lock = threading.Lock()
        self._tl = threading.local()
        self._bound_host = None
        self.port = None
        self._listening = False
        self._restart_at = None
        self._ticker = None
        self._last_reap = time.monotonic()
        self._persist_pending = False

        base = 10 if initial_index is None else int(initial_index)
        self._index = base
        for k in self._tbl:
            self._tbl[k] = base
        with self._lock:
            self._local = self._ensure_node(datacenter, node_name, node_address, local=True,
                                            node_id=self.node_id)
        if state_file and os.path.exists(state_file):
            self._load_state()

    # ------------------------------------------------------------------ life cycle

    @property
    def address(self):
        """HOST:PORT of the TCP listener (None when only a unix socket is served)."""
        if self.port is None:
            return None
        return "%s:%d" % (self._url_host(), self.port)

    @property
    def url(self):
        return "http://%s" % self.address if self.port is not None else None

    def _url_host(self):
        h = self._bound_host or "127.0.0.1"
        if h in ("0.0.0.0", ""):
            h = "127.0.0.1"
        if h == "::":
            h = "::1"
        return "[%s]" % h if ":" in h else h

    def start(self):
        """Start listening and the background threads; returns the bound port."""
        host, port = parse_listen_addr(self.http_addr) if self.http_addr else (None, None)
        self._bound_host = host
        self._start_listeners(port)
        if self.control_http:
            chost, cport = parse_listen_addr(self.control_http)
            fam = socket.AF_INET6 if ":" in chost else socket.AF_INET
            srv = _TCPServer((chost, cport), self, fam, control_only=True)
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True, name="consul-emu-control")
            t.start()
            self._control_server = (srv, t)
        self._ticker = threading.Thread(target=self._tick_loop, daemon=True, name="consul-emu-ticker")
        self._ticker.start()
        return self.port

    @property
    def control_port(self):
        return self._control_server[0].server_address[1] if self._control_server else None

    def _start_listeners(self, port):
        servers = []
        try:
            if self.http_addr:
                host = self._bound_host
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                srv = _TCPServer((host, port), self, fam)
                self.port = srv.server_address[1]
                servers.append(srv)
            if self.unix_path:
                try:
                    os.unlink(self.unix_path)
                except FileNotFoundError:
                    pass
                servers.append(_UnixServer(self.unix_path, self))
        except Exception:
            for s in servers:
                s.server_close()
            raise
        for srv in servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True, name="consul-emu-http")
            t.start()
            self._servers.append((srv, t))
        self._listening = True

    def _stop_listeners(self, close_existing):
        servers, self._servers = self._servers, []
        for srv, t in servers:
            srv.shutdown()
            srv.server_close()
            t.join(timeout=2)
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
        self._listening = False
        if close_existing:
            with self._lock:
                self._epoch += 1
                self._cond.notify_all()
            self._close_conns()

    def _track_conn(self, conn, add):
        with self._conn_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _close_conns(self):
        # the connection of a control request that asked for this survives
        # until its answer is written
        keep = getattr(self._tl, "conn", None)
        with self._conn_lock:
            conns = [c for c in self._conns if c is not keep]
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        """Stop everything; safe to call twice."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._stop_event.set()
            self._cond.notify_all()
        with self._log_lock:
            self._log_cond.notify_all()
        self._stop_listeners(close_existing=True)
        if self._control_server:
            srv, t = self._control_server
            srv.shutdown()
            srv.server_close()
            t.join(timeout=2)
            self._control_server = None
        self._close_conns()
        with self._lock:
            for node in self._nodes.values():
                for c in node.checks.values():
                    if c.runner:
                        c.runner.stop()
                        c.runner = None
        if self._ticker:
            self._ticker.join(timeout=2)
        if self._ca:
            self._ca.close()
            self._ca = None
        if self.state_file:
            self._save_state()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _tick_loop(self):
        while not self._stop_event.wait(0.02):
            try:
                self._tick()
            except Exception:  # pragma: no cover - keep the ticker alive
                if self.verbose:
                    traceback.print_exc()

    def _tick(self):
        now = time.monotonic()
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            if not self._listening and not self._stopping:
                try:
                    self._start_listeners(self.port)
                except OSError:
                    self._restart_at = now + 0.1
        with self._lock:
            changed = False
            for node in list(self._nodes.values()):
                for c in list(node.checks.values()):
                    if c.ttl_deadline is not None and now >= c.ttl_deadline:
                        c.ttl_deadline = None
                        out = "TTL expired"
                        if c.ttl_last_output:
                            out = "TTL expired (last output before timeout follows): %s" % c.ttl_last_output
                        self._update_check(c, CRITICAL, out)
                        changed = True
                    if c.defer_deadline is not None and now >= c.defer_deadline:
                        c.defer_deadline = None
                        if c.catalog_output != c.output:
                            c.catalog_output = c.output
                            self._bump_check(c)
                            changed = True
            if now - self._last_reap >= self.reaper_interval:
                self._last_reap = now
                if self._reap():
                    changed = True
            # wake leaf-certificate watchers whose certificate is due
            for leaf in self._leaves.values():
                if leaf.get("renew_at") and time.time() >= leaf["renew_at"] and not leaf.get("due_notified"):
                    leaf["due_notified"] = True
                    self._cond.notify_all()
            if self._persist_pending:
                self._persist_pending = False
                self._save_state()
            if changed:
                self._cond.notify_all()

    # ------------------------------------------------------------------ indexes

    def _next_index(self):
        self._index += 1
        return self._index

    def _changed(self):
        self._persist_pending = bool(self.state_file)
        self._cond.notify_all()

    def _touch_service(self, dc, name, idx):
        self._svc_idx[(dc, name.lower())] = idx

    def _service_exists(self, dc, lname):
        for (ndc, _), node in self._nodes.items():
            if ndc != dc:
                continue
            for s in node.services.values():
                if s.name.lower() == lname:
                    return True
        return False

    def _service_index(self, dc, name):
        """maxIndexForService: the service's index entry, else the last
        extinction index, else the catalog max; never below 1."""
        lname = name.lower()
        if self._service_exists(dc, lname):
            idx = self._svc_idx.get((dc, lname))
            if idx is None:
                idx = max(self._tbl.values())
        else:
            idx = self._extinction.get(dc)
            if idx is None:
                idx = max(self._tbl.values())
        return max(int(idx), 1)

    def _bump_check(self, c):
        idx = self._next_index()
        c.modify_index = idx
        self._tbl["checks"] = idx
        node = self._node_of_check(c)
        if node is None:
            return idx
        if c.service_id:
            svc = node.services.get(c.service_id)
            if svc:
                self._touch_service(node.dc, svc.name, idx)
        else:
            for s in node.services.values():
                self._touch_service(node.dc, s.name, idx)
        self._changed()
        return idx

    def _node_of_check(self, c):
        for node in self._nodes.values():
            if node.checks.get(c.check_id) is c:
                return node
        return None

    # ------------------------------------------------------------------ catalog helpers

    def _ensure_node(self, dc, name, address, local=False, meta=None, node_id=None, status=PASSING):
        key = (dc, name)
        node = self._nodes.get(key)
        if node is not None:
            changed = False
            if address and node.address != address:
                node.address = address
                node.tagged = {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address}
                changed = True
            if meta is not None:
                new_meta = {"consul-network-segment": "", "consul-version": CONSUL_VERSION}
                new_meta.update(meta)
                if new_meta != node.meta:
                    node.meta = new_meta
                    changed = True
            if changed:
                idx = self._next_index()
                node.modify_index = idx
                self._tbl["nodes"] = idx
                for s in node.services.values():
                    self._touch_service(dc, s.name, idx)
            return node
        m = {"consul-network-segment": "", "consul-version": CONSUL_VERSION}
        m.update(meta or {})
        tagged = {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address}
        node = Node(name, node_id or str(uuid.uuid4()), address, dc, m, tagged, local=local)
        idx = self._next_index()
        node.create_index = node.modify_index = idx
        self._tbl["nodes"] = idx
        serf = Check()
        serf.node = name
        serf.check_id = "serfHealth"
        serf.name = "Serf Health Status"
        serf.status = status
        serf.output = serf.catalog_output = "Agent alive and reachable" if status == PASSING else "Agent not live or unreachable"
        serf.create_index = serf.modify_index = idx
        self._tbl["checks"] = idx
        node.checks["serfHealth"] = serf
        self._nodes[key] = node
        self._datacenters.add(dc)
        self._changed()
        return node

    def _remove_service(self, node, sid):
        svc = node.services.pop(sid, None)
        if svc is None:
            return None
        for cid in [cid for cid, c in node.checks.items() if c.service_id == sid]:
            c = node.checks.pop(cid)
            if c.runner:
                c.runner.stop()
                c.runner = None
            c.ttl_deadline = None
        idx = self._next_index()
        self._tbl["services"] = idx
        self._tbl["checks"] = idx
        lname = svc.name.lower()
        if self._service_exists(node.dc, lname):
            self._touch_service(node.dc, svc.name, idx)
        else:
            self._svc_idx.pop((node.dc, lname), None)
            self._extinction[node.dc] = idx
        self._changed()
        return svc

    def _update_check(self, c, status, output, force_sync=False):
        """The agent's State.UpdateCheck: status changes sync at once, output-only
        changes of local checks are deferred (check_update_interval)."""
        now = time.monotonic()
        if status == CRITICAL:
            if c.status != CRITICAL or c.critical_since is None:
                c.critical_since = now
        else:
            c.critical_since = None
        if c.status == status and c.output == output and c.catalog_output == output:
            return False
        if (c.local and not force_sync and self.check_update_interval > 0 and c.status == status):
            c.output = output
            if c.catalog_output != output and c.defer_deadline is None:
                d = self.check_update_interval
                c.defer_deadline = now + d / 2 + random.uniform(0, d)
            return False
        c.status = status
        c.output = output
        c.catalog_output = output
        c.defer_deadline = None
        self._bump_check(c)
        return True

    def _runner_result(self, runner, status, output):
        with self._lock:
            node = self._nodes.get((self.datacenter, runner.node))
            c = node.checks.get(runner.check_id) if node else None
            if c is None or c.runner is not runner:
                return
            # checks.StatusHandler: SuccessBeforePassing / FailuresBeforeCritical
            if status in (PASSING, WARNING):
                c.success_counter += 1
                c.failure_counter = 0
                if c.success_counter >= c.success_before_passing:
                    self._update_check(c, status, output)
            else:
                c.failure_counter += 1
                c.success_counter = 0
                if c.failure_counter >= c.failures_before_critical:
                    self._update_check(c, status, output)
                elif c.failure_counter >= c.failures_before_warning:
                    self._update_check(c, WARNING, output)
            self._cond.notify_all()

    def _reap(self):
        """reapServicesInternal: deregister local services whose check with
        DeregisterCriticalServiceAfter has been critical for longer than it."""
        now = time.monotonic()
        reaped = False
        node = self._local
        for c in list(node.checks.values()):
            if not c.service_id or c.service_id not in node.services:
                continue
            if c.deregister_after <= 0 or c.status != CRITICAL or c.critical_since is None:
                continue
            timeout = max(c.deregister_after / SEC, self.min_deregister_after)
            if now - c.critical_since > timeout:
                if self.verbose:
                    sys.stderr.write("consul-emulator: check %s critical for too long; deregistered service %s\n"
                                     % (c.check_id, c.service_id))
                self._remove_service(node, c.service_id)
                reaped = True
        return reaped

    # ------------------------------------------------------------------ JSON views

    def _node_json(self, node):
        return {"ID": node.id, "Node": node.name, "Address": node.address, "Datacenter": node.dc,
                "TaggedAddresses": dict(sorted(node.tagged.items())), "Meta": dict(sorted(node.meta.items())),
                "CreateIndex": node.create_index, "ModifyIndex": node.modify_index}

    @staticmethod
    def _tagged_json(ta):
        return {k: {"Address": v.get("Address", ""), "Port": v.get("Port", 0)} for k, v in sorted(ta.items())}

    def _service_json(self, s):
        d = {}
        if s.kind:
            d["Kind"] = s.kind
        d["ID"] = s.id
        d["Service"] = s.name
        d["Tags"] = list(s.tags) if s.tags is not None else []
        d["Address"] = s.address
        if s.tagged_addresses:
            d["TaggedAddresses"] = self._tagged_json(s.tagged_addresses)
        d["Meta"] = dict(sorted(s.meta.items())) if s.meta is not None else None
        d["Port"] = s.port
        if s.socket_path:
            d["SocketPath"] = s.socket_path
        d["Weights"] = {"Passing": s.weights["Passing"], "Warning": s.weights["Warning"]}
        d["EnableTagOverride"] = s.enable_tag_override
        d["Proxy"] = s.proxy if isinstance(s.proxy, dict) and s.proxy else {"Mode": "", "MeshGateway": {}, "Expose": {}}
        d["Connect"] = s.connect if isinstance(s.connect, dict) else {}
        if self.enterprise:
            d["Partition"] = s.partition
            d["Namespace"] = s.namespace
        d["CreateIndex"] = s.create_index
        d["ModifyIndex"] = s.modify_index
        return d

    def _agent_service_json(self, s):
        d = {}
        if s.kind:
            d["Kind"] = s.kind
        d["ID"] = s.id
        d["Service"] = s.name
        d["Tags"] = list(s.tags) if s.tags else []
        d["Meta"] = dict(sorted(s.meta.items())) if s.meta else {}
        d["Port"] = s.port
        d["Address"] = s.address
        if s.socket_path:
            d["SocketPath"] = s.socket_path
        if s.tagged_addresses:
            d["TaggedAddresses"] = self._tagged_json(s.tagged_addresses)
        d["Weights"] = {"Passing": s.weights["Passing"], "Warning": s.weights["Warning"]}
        d["EnableTagOverride"] = s.enable_tag_override
        if isinstance(s.connect, dict) and ci_get(s.connect, "Native"):
            d["Connect"] = {"Native": True}
        if self.enterprise:
            d["Partition"] = s.partition
            d["Namespace"] = s.namespace
        d["Datacenter"] = self.datacenter
        return d

    def _check_definition_json(self, c):
        d = c.definition or {}
        out = {}
        for k in ("HTTP", "TLSServerName", "TLSSkipVerify", "Header", "Method", "Body", "DisableRedirects",
                  "TCP", "TCPUseTLS", "UDP", "GRPC", "GRPCUseTLS", "H2PING", "AliasNode", "AliasService",
                  "OSService"):
            if d.get(k):
                out[k] = d[k]
        if c.interval:
            out["Interval"] = format_go_duration(c.interval)
        if c.timeout:
            out["Timeout"] = format_go_duration(c.timeout)
        if c.deregister_after:
            out["DeregisterCriticalServiceAfter"] = format_go_duration(c.deregister_after)
        if c.ttl:
            out["TTL"] = format_go_duration(c.ttl)
        return out

    def _check_json(self, c, local_view=False):
        return {"Node": c.node, "CheckID": c.check_id, "Name": c.name, "Status": c.status, "Notes": c.notes,
                "Output": c.output if local_view else c.catalog_output, "ServiceID": c.service_id,
                "ServiceName": c.service_name, "ServiceTags": list(c.service_tags or []), "Type": c.type,
                "Interval": format_go_duration(c.interval) if c.interval else "",
                "Timeout": format_go_duration(c.timeout) if c.timeout else "",
                "ExposedPort": 0, "Definition": self._check_definition_json(c),
                "CreateIndex": c.create_index, "ModifyIndex": c.modify_index}

    # ------------------------------------------------------------------ ACL helpers

    def _parse_token(self, req):
        """parseTokenInternal: ?token=, X-Consul-Token, Authorization: Bearer."""
        tok = req.q("token")
        if tok:
            return tok
        tok = req.header("X-Consul-Token")
        if tok:
            return tok
        auth = req.header("Authorization")
        if auth:
            parts = auth.split(" ")
            if len(parts) > 1 and parts[0].lower() == "bearer":
                value = " ".join(parts[1:]).strip()
                return value.split(" ")[0].strip()
        return ""

    def _resolve(self, secret):
        """ResolveToken: None when ACLs are disabled; 403 'ACL not found' for
        an unknown secret; the anonymous token for an empty one."""
        if not self.acl_enabled:
            return None
        with self._lock:
            if secret == "":
                anon = self._tokens.get("anonymous")
                return anon or Token("", accessor=ANONYMOUS_ACCESSOR)
            tok = self._tokens.get(secret)
        if tok is None:
            raise APIError(403, "ACL not found")
        return tok

    def _allowed(self, tok, resource, name, need):
        if tok is None or tok.management:
            return True
        best = None
        for (n, is_prefix, level) in tok.rules.get(resource, []):
            if not is_prefix and n == name:
                best = (1 << 30, level)
                break
            if is_prefix and name.startswith(n) and (best is None or len(n) > best[0]):
                best = (len(n), level)
        if best is None:
            return self.acl_default_policy == "allow"
        level = best[1]
        return level == "write" or (level == "read" and need == "read")

    def _require(self, tok, resource, name, need):
        if not self._allowed(tok, resource, name, need):
            raise APIError(403, "Permission denied: token with AccessorID '%s' lacks permission '%s:%s' on %s"
                           % (tok.accessor, resource, need, go_quote(name)))

    def _parse_ent_meta(self, req):
        """(partition, namespace) a request is scoped to: ("default", "default")
        when it names none, ("", "") in the Community Edition (which refuses
        any non-empty ns or partition)."""
        if self.enterprise:
            ns = req.q("ns") or req.header("X-Consul-Namespace") or "default"
            part = req.q("partition") or req.header("X-Consul-Partition") or "default"
            return part, ns
        if req.header("X-Consul-Namespace"):
            raise APIError(400, 'Invalid header: "X-Consul-Namespace" - Namespaces are a Consul Enterprise feature')
        if req.q("ns"):
            raise APIError(400, 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature')
        if req.header("X-Consul-Partition"):
            raise APIError(400, 'Invalid header: "X-Consul-Partition" - Partitions are a Consul Enterprise feature')
        if req.q("partition"):
            raise APIError(400, 'Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature')
        return "", ""

    def _in_scope(self, s, ent):
        """Whether service s belongs to the (partition, namespace) a request named."""
        return not self.enterprise or (s.partition, s.namespace) == tuple(ent)

    def _parse_wait(self, req):
        """parseWait: returns (min_index, wait_seconds or None)."""
        wait = None
        w = req.q("wait")
        if w:
            try:
                wait = parse_go_duration(w) / SEC
            except ValueError:
                raise APIError(400, "Invalid wait time")
        min_index = 0
        i = req.q("index")
        if i:
            if not re.fullmatch(r"[0-9]+", i) or int(i) >= 1 << 64:
                raise APIError(400, "Invalid index")
            min_index = int(i)
        return min_index, wait

    def _query_time(self, wait):
        """Server side blockingQuery timeout: default 5m, capped at 10m, plus
        up to wait/16 of random jitter."""
        t = wait if wait is not None and wait > 0 else self.default_wait
        t = min(t, self.max_wait)
        return t + random.uniform(0, t / 16.0)

    def _parse_consistency(self, req):
        stale = req.has("stale")
        consistent = req.has("consistent")
        if stale and consistent:
            raise APIError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        ms = req.q("max_stale")
        if ms:
            try:
                parse_go_duration(ms)
            except ValueError:
                raise APIError(400, "Invalid max_stale value %s" % go_quote(ms))
            stale = True
        if req.has("cached") and consistent:
            raise APIError(400, "Cannot specify ?cached with ?consistent, conflicting semantics.")
        return stale, consistent

    def _blocking(self, min_index, wait, compute):
        """Run compute() (under the lock) until its index passes min_index or
        the wait (with jitter) ends. Index 0 never blocks."""
        deadline = time.monotonic() + self._query_time(wait)
        with self._cond:
            epoch, gen = self._epoch, self._release_gen
            while True:
                idx, result = compute()
                if min_index == 0 or idx > min_index or self._stopping or gen != self._release_gen:
                    return idx, result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return idx, result
                self._cond.wait(remaining)
                if epoch != self._epoch:
                    raise _Abort()

    @staticmethod
    def _meta_headers(idx, stale, consistent, known_leader=True):
        level = "stale" if stale else ("consistent" if consistent else "leader")
        return [("X-Consul-Effective-Consistency", level), ("X-Consul-Index", str(max(int(idx), 1))),
                ("X-Consul-Knownleader", "true" if known_leader else "false"),
                ("X-Consul-Lastcontact", "0")]

    def _json(self, req, obj, status=200, headers=None):
        hdrs = list(headers or [])
        hdrs.append(("Content-Type", "application/json"))
        return Response(status, go_json(obj, pretty=req.has("pretty")), hdrs)

    # ------------------------------------------------------------------ agent endpoints

    def _h_agent_self(self, req, _):
        tok = self._resolve(self._parse_token(req))
        self._require(tok, "agent", self.node_name, "read")
        cfg = {"Datacenter": self.datacenter, "PrimaryDatacenter": self.datacenter,
               "NodeName": self.node_name, "NodeID": self.node_id, "Revision": CONSUL_REVISION,
               "Server": False, "Version": CONSUL_VERSION, "BuildDate": "2025-01-03T12:00:00Z"}
        member = {"Name": self.node_name, "Addr": self.node_address, "Port": 8301,
                  "Tags": {"build": "%s:%s" % (CONSUL_VERSION, CONSUL_REVISION), "dc": self.datacenter,
                           "id": self.node_id, "role": "node", "segment": "", "vsn": "2",
                           "vsn_max": "3", "vsn_min": "2"},
                  "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                  "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}
        debug = {"Datacenter": self.datacenter, "NodeName": self.node_name, "NodeID": self.node_id,
                 "ACLsEnabled": self.acl_enabled, "ACLResolverSettings": {
                     "ACLDefaultPolicy": self.acl_default_policy if self.acl_enabled else "allow"},
                 "ClientAddrs": [self._url_host().strip("[]")], "HTTPPort": self.port or 0,
                 "Emulator": True}
        body = {"Config": cfg, "DebugConfig": debug,
                "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
                "Member": member,
                "Stats": {"agent": {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"},
                          "consul": {"acl": "enabled" if self.acl_enabled else "disabled",
                                     "known_servers": "1", "server": "false"}},
                "Meta": {"consul-network-segment": "", "consul-version": CONSUL_VERSION}}
        return self._json(req, body)

    def _h_agent_members(self, req, _):
        self._resolve(self._parse_token(req))
        member = {"Name": self.node_name, "Addr": self.node_address, "Port": 8301,
                  "Tags": {"dc": self.datacenter, "role": "node", "id": self.node_id}, "Status": 1,
                  "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2, "DelegateMin": 2,
                  "DelegateMax": 5, "DelegateCur": 4}
        return self._json(req, [member])

    def _h_agent_services(self, req, _):
        tok_s = self._parse_token(req)
        ent = self._parse_ent_meta(req)
        tok = self._resolve(tok_s)
        # ?filter (bexpr) is accepted but NOT evaluated by the emulator.
        with self._lock:
            out = {}
            total = 0
            for sid in sorted(self._local.services):
                s = self._local.services[sid]
                if not self._in_scope(s, ent):
                    continue
                total += 1
                if self._allowed(tok, "service", s.name, "read"):
                    out[sid] = self._agent_service_json(s)
        hdrs = []
        if tok_s and self.acl_enabled:
            hdrs.append(("X-Consul-Results-Filtered-By-Acls", "true" if total != len(out) else "false"))
        return self._json(req, out, headers=hdrs)

    def _agent_service_hash(self, s):
        return hashlib.sha256(go_json(self._agent_service_json(s))).hexdigest()[:16]

    def _h_agent_service(self, req, sid):
        min_index, wait = self._parse_wait(req)
        tok_s = self._parse_token(req)
        ent = self._parse_ent_meta(req)
        tok = self._resolve(tok_s)
        want_hash = req.q("hash")
        should_block = bool(want_hash)
        deadline = time.monotonic() + (self._query_time(wait) if should_block else 0)
        with self._cond:
            epoch, gen = self._epoch, self._release_gen
            while True:
                s = self._local.services.get(sid)
                if s is None or not self._in_scope(s, ent):
                    raise APIError(404, "unknown service ID: %s" % sid)
                self._require(tok, "service", s.name, "read")
                body = self._agent_service_json(s)
                h = hashlib.sha256(go_json(body)).hexdigest()[:16]
                if not should_block or h != want_hash or self._stopping or gen != self._release_gen:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if epoch != self._epoch:
                    raise _Abort()
        body["ContentHash"] = h
        # ContentHash sits after ModifyIndex in api.AgentService
        ordered = {}
        for k, v in body.items():
            if k == "ContentHash":
                continue
            if k in ("Proxy", "Connect", "Datacenter") and "ContentHash" not in ordered:
                ordered["ContentHash"] = h
            ordered[k] = v
        ordered.setdefault("ContentHash", h)
        return self._json(req, ordered, headers=[("X-Consul-Contenthash", h)])

    def _h_agent_checks(self, req, _):
        tok_s = self._parse_token(req)
        self._parse_ent_meta(req)
        tok = self._resolve(tok_s)
        with self._lock:
            out = {}
            for cid in sorted(self._local.checks):
                c = self._local.checks[cid]
                if not c.local:
                    continue
                ok = (self._allowed(tok, "service", c.service_name, "read") if c.service_id
                      else self._allowed(tok, "node", self.node_name, "read"))
                if ok:
                    out[cid] = self._check_json(c, local_view=True)
        return self._json(req, out)

    # -- registration

    def _decode_service_definition(self, body):
        try:
            raw = decode_json_body(body, "structs.ServiceDefinition")
            sd = decode_struct(raw, "ServiceDefinition", SERVICE_FIELDS, strict=True)
        except DecodeError as e:
            raise APIError(400, "Request decode failed: %s" % e)
        return sd

    @staticmethod
    def _check_types(sd):
        """ServiceDefinition.CheckTypes(): Check (if not empty) then Checks, all validated."""
        out = []
        single = sd.get("Check") or {}
        cands = []
        if any(v not in (None, "", 0, False, [], {}) for v in single.values()):
            cands.append(single)
        cands.extend(sd.get("Checks") or [])
        for ct in cands:
            err = ConsulEmulator._validate_check_type(ct)
            if err:
                raise APIError(400, "Invalid check: %s" % err)
            out.append(ct)
        return out

    @staticmethod
    def _check_kind(ct):
        interval = ct.get("Interval") or 0
        if ct.get("GRPC") and interval > 0:
            return "grpc"
        if ct.get("HTTP") and interval > 0:
            return "http"
        if (ct.get("TTL") or 0) > 0:
            return "ttl"
        if ct.get("TCP") and interval > 0:
            return "tcp"
        if ct.get("UDP") and interval > 0:
            return "udp"
        if ct.get("AliasNode") or ct.get("AliasService"):
            return "alias"
        if ct.get("ScriptArgs") and ct.get("DockerContainerID") and interval > 0:
            return "docker"
        if ct.get("ScriptArgs"):
            return "script"
        if ct.get("H2PING") and interval > 0:
            return "h2ping"
        if ct.get("OSService") and interval > 0:
            return "os_service"
        return ""

    @staticmethod
    def _validate_check_type(ct):
        """CheckType.Validate()."""
        interval = ct.get("Interval") or 0
        ttl = ct.get("TTL") or 0
        interval_check = bool(ct.get("ScriptArgs") or ct.get("HTTP") or ct.get("TCP") or ct.get("UDP")
                              or ct.get("GRPC") or ct.get("H2PING") or ct.get("OSService"))
        alias = bool(ct.get("AliasNode") or ct.get("AliasService"))
        if interval > 0 and ttl > 0:
            return "Interval and TTL cannot both be specified"
        if interval_check and interval <= 0:
            return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        if interval_check and alias:
            return "Interval cannot be set for Alias checks"
        if alias and ttl > 0:
            return "TTL must be not be set for Alias checks"
        if not interval_check and not alias and ttl <= 0:
            return "TTL must be > 0 for TTL checks"
        if (ct.get("OutputMaxSize") or 0) < 0:
            return "MaxOutputMaxSize must be positive"
        if (ct.get("FailuresBeforeWarning") or 0) > (ct.get("FailuresBeforeCritical") or 0):
            return "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
        return None

    _META_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]+$")

    def _validate_meta(self, meta):
        if not meta:
            return
        if len(meta) > 64:
            raise APIError(400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs")
        for k, v in meta.items():
            if k == "":
                raise APIError(400, "Invalid Service Meta: Key cannot be blank")
            if not self._META_KEY_RE.match(k):
                raise APIError(400, "Invalid Service Meta: Key contains invalid characters")
            if len(k) > 128:
                raise APIError(400, "Invalid Service Meta: Key is too long (limit: 128 characters)")
            if k.startswith("consul-"):
                raise APIError(400, "Invalid Service Meta: Key prefix 'consul-' is reserved for internal use")
            if len(v) > 512:
                raise APIError(400, "Invalid Service Meta: Value is too long (limit: 512 characters)")

    def _h_register(self, req, _):
        ent = self._parse_ent_meta(req)
        sd = self._decode_service_definition(req.body)
        name = sd.get("Name") or ""
        if name == "":
            raise APIError(400, "Missing service name")
        if (sd.get("Address") or "") in ("0.0.0.0", "::", "[::]"):
            raise APIError(400, "Invalid service address")
        tok = self._resolve(self._parse_token(req))
        weights = sd.get("Weights")
        if weights is not None:
            if (weights.get("Passing") or 0) < 1:
                raise APIError(400, "Invalid Weights: Passing must be greater than 0")
            if (weights.get("Warning") or 0) < 0:
                raise APIError(400, "Invalid Weights: Warning must be greater or equal than 0")
        self._validate_meta(sd.get("Meta"))
        chk_types = self._check_types(sd)
        for ct in chk_types:
            if ct.get("Status") and ct["Status"] not in VALID_STATUSES:
                raise APIError(400, "Status for checks must 'passing', 'warning', 'critical'")
        for ct in chk_types:
            if ct.get("ScriptArgs"):
                raise APIError(500, "Scripts are disabled on this agent from remote calls; to enable, "
                                    "configure 'enable_script_checks' to true")
        sid = sd.get("ID") or name
        self._require(tok, "service", name, "write")
        with self._lock:
            existing = self._local.services.get(sid)
            if existing is not None and existing.name != name:
                self._require(tok, "service", existing.name, "write")
        replace = False
        vals = req.args.get("replace-existing-checks")
        if vals and (vals[0] == "" or vals[0] == "true"):
            replace = True
        with self._lock:
            self._register_local(sd, chk_types, replace, ent=ent)
        return Response(200)

    def _register_local(self, sd, chk_types, replace_checks, ent=None):
        """Agent.AddService + anti-entropy sync, done at once under the lock."""
        node = self._local
        name = sd["Name"]
        sid = sd.get("ID") or name
        svc = Service()
        if self.enterprise and ent:
            svc.partition, svc.namespace = ent
        svc.local = True
        svc.kind = sd.get("Kind") or ""
        svc.id = sid
        svc.name = name
        svc.tags = sd.get("Tags")
        svc.address = sd.get("Address") or ""
        svc.meta = sd.get("Meta")
        svc.port = sd.get("Port") or 0
        svc.socket_path = sd.get("SocketPath") or ""
        w = sd.get("Weights")
        svc.weights = {"Passing": 1, "Warning": 1} if w is None else {"Passing": w.get("Passing") or 0,
                                                                       "Warning": w.get("Warning") or 0}
        svc.enable_tag_override = bool(sd.get("EnableTagOverride"))
        svc.proxy = sd.get("Proxy")
        svc.connect = sd.get("Connect")
        svc.definition = sd
        ta = {k: {"Address": v.get("Address") or "", "Port": v.get("Port") or 0}
              for k, v in (sd.get("TaggedAddresses") or {}).items()}
        try:
            ip = ipaddress.ip_address(svc.address) if svc.address else None
        except ValueError:
            ip = None
        if ip is not None and ip.version == 4:
            ta.setdefault("lan_ipv4", {"Address": svc.address, "Port": svc.port})
            ta.setdefault("wan_ipv4", {"Address": svc.address, "Port": svc.port})
        elif ip is not None and ip.version == 6:
            ta.setdefault("lan_ipv6", {"Address": svc.address, "Port": svc.port})
            ta.setdefault("wan_ipv6", {"Address": svc.address, "Port": svc.port})
        for key, ver in (("lan_ipv4", 4), ("wan_ipv4", 4), ("lan_ipv6", 6), ("wan_ipv6", 6)):
            if key in ta:
                try:
                    ok = ipaddress.ip_address(ta[key]["Address"]).version == ver
                except ValueError:
                    ok = False
                if not ok:
                    raise APIError(500, "Service tagged address %s must be a valid ipv%d address" % (go_quote(key), ver))
        svc.tagged_addresses = ta

        existing = node.services.get(sid)
        changed = existing is None or existing.fields() != svc.fields()
        old_name = existing.name if existing is not None else None

        new_checks = []
        for i, ct in enumerate(chk_types):
            cid = ct.get("CheckID") or ("service:%s" % sid + (":%d" % (i + 1) if len(chk_types) > 1 else ""))
            c = Check()
            c.local = True
            c.node = node.name
            c.check_id = cid
            c.name = ct.get("Name") or "Service '%s' check" % name
            c.notes = ct.get("Notes") or ""
            c.service_id = sid
            c.service_name = name
            c.service_tags = list(svc.tags or [])
            c.type = self._check_kind(ct)
            c.definition = {k: v for k, v in ct.items() if v not in (None, "", 0, False, [], {})}
            interval = ct.get("Interval") or 0
            if c.type in ("http", "tcp", "grpc", "udp", "h2ping", "os_service", "docker", "script"):
                interval = max(interval, int(self.min_check_interval * SEC))
            c.interval = interval
            c.timeout = ct.get("Timeout") or 0
            c.ttl = ct.get("TTL") or 0
            c.deregister_after = ct.get("DeregisterCriticalServiceAfter") or 0
            om = ct.get("OutputMaxSize") or 0
            c.output_max = om if 0 < om < DEFAULT_OUTPUT_MAX else DEFAULT_OUTPUT_MAX
            c.success_before_passing = ct.get("SuccessBeforePassing") or 0
            c.failures_before_critical = ct.get("FailuresBeforeCritical") or 0
            c.failures_before_warning = ct.get("FailuresBeforeWarning") or c.failures_before_critical
            # checks.NewStatusHandler starts the counters at the thresholds, so
            # the first result is always reported
            c.success_counter = c.success_before_passing
            c.failure_counter = c.failures_before_critical
            c.status = ct.get("Status") or CRITICAL
            prev = node.checks.get(cid)
            if prev is not None:
                # addServiceInternal restores status and output of an existing check
                c.status, c.output, c.catalog_output = prev.status, prev.output, prev.catalog_output
                c.critical_since = prev.critical_since
                c.ttl_last_output = prev.ttl_last_output
                c.create_index, c.modify_index = prev.create_index, prev.modify_index
                if (prev.def_key() != c.def_key() or prev.service_id != sid or prev.name != c.name
                        or prev.notes != c.notes or prev.service_tags != c.service_tags or prev.type != c.type):
                    changed = True
            else:
                changed = True
                if c.status == CRITICAL:
                    c.critical_since = time.monotonic()
            new_checks.append(c)

        new_ids = {c.check_id for c in new_checks}
        removed = []
        if replace_checks:
            removed = [cid for cid, c in node.checks.items() if c.service_id == sid and cid not in new_ids]
            if removed:
                changed = True

        if changed:
            idx = self._next_index()
        else:
            idx = None
        if existing is not None:
            svc.create_index = existing.create_index
            svc.modify_index = existing.modify_index if idx is None or existing.fields() == svc.fields() else idx
        else:
            svc.create_index = svc.modify_index = idx
        node.services[sid] = svc
        for cid in removed:
            old = node.checks.pop(cid)
            if old.runner:
                old.runner.stop()
                old.runner = None
        for c in new_checks:
            prev = node.checks.get(c.check_id)
            if prev is not None and prev.runner:
                prev.runner.stop()
                prev.runner = None
            if prev is not None and prev.service_id and prev.service_id != sid:
                pass  # the check moves to this service
            if c.create_index == 0:
                c.create_index = idx
            if idx is not None and (prev is None or prev.def_key() != c.def_key() or prev.service_tags != c.service_tags
                                    or prev.name != c.name or prev.notes != c.notes or prev.service_id != sid):
                c.modify_index = idx
            node.checks[c.check_id] = c
            if c.type == "ttl":
                c.ttl_deadline = time.monotonic() + c.ttl / SEC
            elif c.type in ("http", "tcp", "grpc"):
                c.runner = _CheckRunner(self, c, self.check_stagger)
                c.runner.start()
        if idx is not None:
            self._tbl["services"] = idx
            self._tbl["checks"] = idx
            self._touch_service(node.dc, name, idx)
            if old_name is not None and old_name.lower() != name.lower():
                if self._service_exists(node.dc, old_name.lower()):
                    self._touch_service(node.dc, old_name, idx)
                else:
                    self._svc_idx.pop((node.dc, old_name.lower()), None)
                    self._extinction[node.dc] = idx
        self._changed()

    def _h_deregister(self, req, sid):
        tok_s = self._parse_token(req)
        ent = self._parse_ent_meta(req)
        tok = self._resolve(tok_s)
        with self._lock:
            existing = self._local.services.get(sid)
            if existing is None or not self._in_scope(existing, ent):
                raise APIError(404, "Unknown service ID %s. Ensure that the service ID is passed, not the service name."
                               % go_quote(sid))
            self._require(tok, "service", existing.name, "write")
            self._remove_service(self._local, sid)
        return Response(200)

    # -- TTL updates

    def _h_check_pass(self, req, cid):
        return self._agent_check_update(req, cid, PASSING, req.q("note"))

    def _h_check_warn(self, req, cid):
        return self._agent_check_update(req, cid, WARNING, req.q("note"))

    def _h_check_fail(self, req, cid):
        return self._agent_check_update(req, cid, CRITICAL, req.q("note"))

    def _h_check_update(self, req, cid):
        try:
            raw = decode_json_body(req.body, "agent.checkUpdate")
            upd = decode_struct(raw, "checkUpdate", {"Status": "string", "Output": "string"}, strict=False)
        except DecodeError as e:
            raise APIError(400, "Request decode failed: %s" % e)
        status = upd.get("Status") or ""
        if status not in VALID_STATUSES:
            raise APIError(400, "Invalid check status: '%s'" % status)
        return self._agent_check_update(req, cid, status, upd.get("Output") or "")

    def _agent_check_update(self, req, cid, status, output):
        tok_s = self._parse_token(req)
        ent = self._parse_ent_meta(req)
        tok = self._resolve(tok_s)
        with self._lock:
            c = self._local.checks.get(cid)
            owner = self._local.services.get(c.service_id) if c is not None and c.service_id else None
            if c is None or not c.local or (owner is not None and not self._in_scope(owner, ent)):
                raise APIError(404, "Unknown check ID %s. Ensure that the check ID is passed, not the check name."
                               % go_quote(cid))
            if c.service_id:
                self._require(tok, "service", c.service_name, "write")
            else:
                self._require(tok, "node", self.node_name, "write")
            if c.type != "ttl":
                raise APIError(500, "CheckID %s does not have associated TTL" % go_quote(cid))
            total = len(output.encode("utf-8"))
            if total > c.output_max:
                output = "%s ... (captured %d of %d bytes)" % (
                    output.encode("utf-8")[:c.output_max].decode("utf-8", errors="ignore"), c.output_max, total)
            c.ttl_last_output = output
            c.ttl_deadline = time.monotonic() + c.ttl / SEC
            self._update_check(c, status, output)
            self._cond.notify_all()
        return Response(200)

    # ------------------------------------------------------------------ health

    def _h_health_service(self, req, name):
        ent = self._parse_ent_meta(req)
        dc = req.q("dc") or self.datacenter
        tok_s = self._parse_token(req)
        # ?filter (bexpr) is accepted but NOT evaluated by the emulator.
        # ?near only sorts by network distance; without coordinates the
        # emulator keeps the catalog order.
        stale, consistent = self._parse_consistency(req)
        min_index, wait = self._parse_wait(req)
        tags = req.args.get("tag") or []
        node_meta = []
        for nm in req.args.get("node-meta") or []:
            k, _, v = nm.partition(":")
            node_meta.append((k, v))
        if name == "":
            raise APIError(400, "Missing service name")
        tok = self._resolve(tok_s)
        if dc not in self._datacenters:
            raise APIError(500, "No path to datacenter")
        with self._lock:
            leader = self._leader
        if not leader and not stale:
            raise APIError(500, "No cluster leader")
        filtered = [False]

        def compute():
            entries, filt = self._health_entries(dc, name, tags, node_meta, tok, ent)
            filtered[0] = filt
            return self._service_index(dc, name), entries

        idx, entries = self._blocking(min_index, wait, compute)
        hdrs = self._meta_headers(idx, stale, consistent, known_leader=bool(leader))
        hdrs.append(("X-Consul-Query-Backend", "blocking-query"))
        if tok_s and self.acl_enabled and filtered[0]:
            hdrs.append(("X-Consul-Results-Filtered-By-Acls", "true"))
        if req.has("cached"):
            key = (dc, name.lower(), tuple(tags), tok_s)
            with self._lock:
                hit = self._cache_seen.get(key) == idx
                self._cache_seen[key] = idx
            hdrs.append(("X-Cache", "HIT" if hit else "MISS"))
            if hit:
                hdrs.append(("Age", "0"))
        passing = False
        if req.has("passing"):
            v = req.q("passing")
            if v == "":
                passing = True
            else:
                try:
                    passing = parse_go_bool(v)
                except ValueError:
                    raise APIError(400, "Invalid value for ?passing", headers=hdrs)
        if passing:
            entries = [e for e in entries if all(c["Status"] == PASSING for c in e["Checks"])]
        return self._json(req, entries, headers=hdrs)

    def _health_entries(self, dc, name, tags, node_meta, tok, ent=None):
        lname = name.lower()
        want = [t.lower() for t in tags]
        out = []
        filtered = False
        for (ndc, _), node in sorted(self._nodes.items(), key=lambda kv: kv[0][1].lower()):
            if ndc != dc:
                continue
            if node_meta and not all(node.meta.get(k) == v for k, v in node_meta):
                continue
            for sid in sorted(node.services, key=str.lower):
                s = node.services[sid]
                if s.name.lower() != lname:
                    continue
                if ent is not None and not self._in_scope(s, ent):
                    continue
                have = [t.lower() for t in (s.tags or [])]
                if not all(t in have for t in want):
                    continue
                if tok is not None and not (self._allowed(tok, "node", node.name, "read")
                                            and self._allowed(tok, "service", s.name, "read")):
                    filtered = True
                    continue
                checks = sorted((c for c in node.checks.values() if c.service_id in ("", sid)),
                                key=lambda c: c.check_id.lower())
                out.append({"Node": self._node_json(node), "Service": self._service_json(s),
                            "Checks": [self._check_json(c) for c in checks]})
        return out, filtered

    def _h_catalog_datacenters(self, req, _):
        with self._lock:
            dcs = sorted(self._datacenters)
        return self._json(req, dcs)

    def _h_status_leader(self, req, _):
        with self._lock:
            leader = self._leader
        return self._json(req, leader)

    def _h_status_peers(self, req, _):
        with self._lock:
            leader = self._leader
        return self._json(req, [leader] if leader else [])

    # ------------------------------------------------------------------ connect

    def _ensure_ca(self):
        with self._lock:
            if self._ca is None:
                self._ca = ConnectCA("%s.consul" % self.cluster_id, self.datacenter)
                idx = self._next_index()
                self._ca.new_root(idx)
                self._roots_index = idx
                self._changed()
            return self._ca

    def _roots_json(self):
        ca = self._ca
        roots = []
        for r in ca.roots:
            roots.append({"ID": r["ID"], "Name": r["Name"], "SerialNumber": r["SerialNumber"],
                          "SigningKeyID": r["SigningKeyID"], "ExternalTrustDomain": self.cluster_id,
                          "NotBefore": go_time(r["NotBefore"]), "NotAfter": go_time(r["NotAfter"]),
                          "RootCert": r["RootCert"], "IntermediateCerts": None, "Active": r["Active"],
                          "RotatedOutAt": go_time(r["RotatedOutAt"]) if r["RotatedOutAt"] else "0001-01-01T00:00:00Z",
                          "PrivateKeyType": "ec", "PrivateKeyBits": 256,
                          "CreateIndex": r["index"], "ModifyIndex": r["index"]})
        active = ca.active()
        return {"ActiveRootID": active["ID"] if active else "", "TrustDomain": ca.trust_domain, "Roots": roots}

    def _h_ca_roots(self, req, _):
        stale, consistent = self._parse_consistency(req)
        min_index, wait = self._parse_wait(req)
        # ConnectCA.Roots does not check ACLs: the roots are public
        self._ensure_ca()
        idx, body = self._blocking(min_index, wait, lambda: (self._roots_index, self._roots_json()))
        hdrs = [("X-Cache", "MISS")] + self._meta_headers(idx, stale, consistent)
        return self._json(req, body, headers=hdrs)

    def _leaf_current(self, service):
        """The cached leaf, re-issued when the active root changed or it is due."""
        ca = self._ensure_ca()
        with self._lock:
            leaf = self._leaves.get(service)
            active = ca.active()
            if leaf is not None and leaf["root_id"] == active["ID"] and time.time() < leaf["renew_at"]:
                return leaf
            prev_index = leaf["index"] if leaf else 0
        new = ca.issue_leaf(service, self.leaf_ttl)
        with self._lock:
            cur = self._leaves.get(service)
            if cur is not None and cur is not leaf:
                return cur
            life = new["ValidBefore"] - new["ValidAfter"]
            new["renew_at"] = new["ValidAfter"] + life * random.uniform(0.6, 0.9)
            new["index"] = max(prev_index + 1, self._index)
            self._leaves[service] = new
            self._cond.notify_all()
            return new

    def _leaf_json(self, leaf):
        return {"SerialNumber": leaf["SerialNumber"], "CertPEM": leaf["CertPEM"],
                "PrivateKeyPEM": leaf["PrivateKeyPEM"], "Service": leaf["Service"],
                "ServiceURI": leaf["ServiceURI"], "ValidAfter": go_time(leaf["ValidAfter"]),
                "ValidBefore": go_time(leaf["ValidBefore"]), "CreateIndex": leaf["index"],
                "ModifyIndex": leaf["index"]}

    def _h_ca_leaf(self, req, service):
        self._parse_ent_meta(req)
        self._parse_consistency(req)
        min_index, wait = self._parse_wait(req)
        tok = self._resolve(self._parse_token(req))
        self._require(tok, "service", service, "write")
        deadline = time.monotonic() + self._query_time(wait)
        with self._lock:
            epoch, gen = self._epoch, self._release_gen
        while True:
            leaf = self._leaf_current(service)
            if min_index == 0 or leaf["index"] > min_index:
                break
            with self._cond:
                if self._stopping or gen != self._release_gen:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                due = leaf["renew_at"] - time.time()
                self._cond.wait(max(0.01, min(remaining, due)))
                if epoch != self._epoch:
                    raise _Abort()
        return self._json(req, self._leaf_json(leaf), headers=[("X-Cache", "MISS"),
                                                                ("X-Consul-Index", str(max(leaf["index"], 1)))])

    @staticmethod
    def _parse_spiffe_service(uri):
        """connect.ParseCertURIFromString: returns service name, or raises
        ValueError for a non-Connect URI, or returns None for a Connect URI
        that is not a service identity."""
        p = urllib.parse.urlsplit(uri)
        if p.scheme != "spiffe" or not p.netloc:
            raise ValueError("not a spiffe URI")
        path = p.path
        m = re.fullmatch(r"(?:/ap/[^/]+)?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)", path)
        if m:
            return urllib.parse.unquote(m.group(3))
        if re.fullmatch(r"(?:/ap/[^/]+)?/agent/client/dc/[^/]+/id/[^/]+", path) or path in ("", "/") \
                or re.fullmatch(r"/agent/server/dc/[^/]+", path) or re.fullmatch(r"(?:/ap/[^/]+)?/gateway/mesh/dc/[^/]+", path):
            return None
        raise ValueError("not a connect URI")

    def _h_authorize(self, req, _):
        tok_s = self._parse_token(req)
        self._parse_ent_meta(req)
        try:
            raw = decode_json_body(req.body, "structs.ConnectAuthorizeRequest")
            ar = decode_struct(raw, "ConnectAuthorizeRequest", {"Target": "string", "ClientCertURI": "string",
                                                                 "ClientCertSerial": "string"}, strict=False)
        except DecodeError as e:
            raise APIError(400, "Request decode failed: %s" % e)
        target = ar.get("Target") or ""
        if not target:
            raise APIError(400, "Target service must be specified")
        try:
            src = self._parse_spiffe_service(ar.get("ClientCertURI") or "")
        except ValueError:
            raise APIError(400, "ClientCertURI not a valid Connect identifier")
        if src is None:
            raise APIError(400, "ClientCertURI not a valid Service identifier")
        try:
            tok = self._resolve(tok_s)
        except APIError as e:
            raise APIError(e.status, "Could not resolve token to authorizer: %s" % e.body)
        self._require(tok, "service", target, "write")
        with self._lock:
            cands = [ix for ix in self._intentions
                     if ix["DestinationName"] in (target, "*") and ix["SourceName"] in (src, "*")]
            cands.sort(key=lambda ix: -ix["Precedence"])
            default = self._intention_default
            if default is None:
                default = "deny" if (self.acl_enabled and self.acl_default_policy == "deny") else "allow"
        if cands:
            ix = cands[0]
            if ix.get("Permissions"):
                detail = "Permissions: %d" % len(ix["Permissions"])
            else:
                detail = "Action: " + ix["Action"].upper()
            desc = "%s => %s (ID: %s, Precedence: %d, %s)" % (ix["SourceName"], ix["DestinationName"], ix["ID"],
                                                              ix["Precedence"], detail)
            if ix.get("Permissions"):
                authorized, reason = False, "Matched L7 intention: " + desc
            else:
                authorized, reason = ix["Action"] == "allow", "Matched L4 intention: " + desc
        else:
            authorized, reason = default == "allow", "Default behavior configured by ACLs"
        return self._json(req, {"Authorized": authorized, "Reason": reason}, headers=[("X-Cache", "MISS")])

    # ------------------------------------------------------------------ request handling

    def _route(self, req):
        path = req.path
        if path not in _EXACT_ROUTES and any(p == path + "/" for p, _, _ in _SUBTREE_ROUTES):
            # Go's ServeMux redirects a subtree root named without its slash
            loc = path + "/" + ("?" + req.query if req.query else "")
            body = '<a href="%s">Moved Permanently</a>.\n\n' % loc if req.method in ("GET", "HEAD") else ""
            hdrs = [("Location", loc)]
            if body:
                hdrs.append(("Content-Type", "text/html; charset=utf-8"))
            return Response(301, body, hdrs, gzip_ok=False)
        route = None
        if path in _EXACT_ROUTES:
            methods, handler = _EXACT_ROUTES[path]
            route = (path, methods, handler, "")
        else:
            for p, methods, handler in _SUBTREE_ROUTES:
                if path.startswith(p):
                    route = (p, methods, handler, path[len(p):])
                    break
        if route is None:
            if path == "/":
                return Response(200, "Consul Agent", [("Content-Type", "text/plain; charset=utf-8")], gzip_ok=False)
            return Response(404, b"", gzip_ok=False)
        _, methods, handler, suffix = route
        allow = ",".join(("OPTIONS",) + tuple(methods))
        if req.method == "OPTIONS":
            return Response(200, b"", [("Allow", allow)])
        if req.method not in methods:
            return text_response(405, "method %s not allowed" % req.method, [("Allow", allow)])
        try:
            return getattr(self, handler)(req, suffix)
        except APIError as e:
            return text_response(e.status, e.body, e.headers)

    def _log_request(self, req):
        body = req.body
        try:
            text = body.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")
            b64 = base64.b64encode(body).decode()
        with self._log_lock:
            self._log_seq += 1
            rec = {"Seq": self._log_seq, "Time": time.time(), "Method": req.method, "Path": req.path,
                   "RawPath": req.raw_path, "Query": req.query,
                   "Args": {k: list(v) for k, v in req.args.items()},
                   "Headers": [[k, v] for k, v in req.headers.items()], "Body": text,
                   "Remote": req.remote, "Transport": req.transport, "Status": None, "Fault": None,
                   "DurationMs": None}
            if b64 is not None:
                rec["BodyBase64"] = b64
            self._log.append(rec)
            if len(self._log) > self.log_limit:
                del self._log[:len(self._log) - self.log_limit]
            self._log_cond.notify_all()
        return rec

    def _finish_record(self, rec, status, t0, fault=None):
        with self._log_lock:
            rec["Status"] = status
            rec["DurationMs"] = round((time.monotonic() - t0) * 1000.0, 3)
            if fault is not None:
                rec["Fault"] = fault
            self._log_cond.notify_all()

    def _match_fault(self, req):
        with self._fault_lock:
            for rule in list(self._faults):
                if not rule.matches(req):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    return None
                rule.hits += 1
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._faults.remove(rule)
                return rule
        return None

    @staticmethod
    def _read_body(h):
        te = (h.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = h.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = h.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n > 0 else b""

    def _serve(self, h):
        t0 = time.monotonic()
        try:
            body = self._read_body(h)
        except (ValueError, OSError, ConnectionError):
            h.close_connection = True
            return
        ca = h.client_address
        remote = "%s:%s" % (ca[0], ca[1]) if isinstance(ca, tuple) and len(ca) >= 2 else "@unix"
        req = Request(h.command, h.path, h.headers, body, remote, h.server.transport)
        if req.path == "/_emulator" or req.path.startswith("/_emulator/"):
            self._tl.conn = h.connection
            try:
                resp = self._control(req)
            except APIError as e:
                resp = text_response(e.status, e.body, e.headers)
            except Exception as e:  # pragma: no cover
                resp = text_response(500, "emulator control error: %s\n%s" % (e, traceback.format_exc()))
            finally:
                self._tl.conn = None
            self._write(h, req, resp)
            return
        if h.server.control_only:
            self._write(h, req, Response(404, b""))
            return
        rec = self._log_request(req)
        rule = self._match_fault(req)
        resp = None
        try:
            if rule is not None:
                if rule.delay:
                    if self._stop_event.wait(rule.delay):
                        raise _Abort()
                if rule.hang:
                    with self._cond:
                        epoch = self._epoch
                        while not self._stopping and epoch == self._epoch:
                            self._cond.wait(1.0)
                    raise _Abort()
                if rule.drop or rule.reset:
                    self._finish_record(rec, "reset" if rule.reset else "dropped", t0, rule.id)
                    self._drop(h, rst=rule.reset)
                    return
                if rule.status is not None:
                    text = rule.body if rule.body is not None else (
                        "rpc error making call: emulator injected fault" if rule.status >= 500 else "")
                    hdrs = list(rule.headers.items())
                    if text:
                        hdrs.append(("Content-Type", rule.content_type or "text/plain; charset=utf-8"))
                    resp = Response(rule.status, text, hdrs)
            if resp is None:
                try:
                    resp = self._route(req)
                except _Abort:
                    raise
                except Exception as e:
                    resp = text_response(500, "emulator internal error: %s" % e)
                    if self.verbose:
                        traceback.print_exc()
            if rule is not None and rule.delay_after:
                if self._stop_event.wait(rule.delay_after):
                    raise _Abort()
        except _Abort:
            self._finish_record(rec, "aborted", t0, rule.id if rule else None)
            self._drop(h, rst=False)
            return
        self._finish_record(rec, resp.status, t0, rule.id if rule else None)
        self._write(h, req, resp)

    @staticmethod
    def _drop(h, rst):
        h.close_connection = True
        try:
            if rst:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
            else:
                h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self, h, req, resp):
        body = resp.body
        headers = list(resp.headers)
        if resp.gzip_ok and req.path.startswith("/v1/"):
            headers.append(("Vary", "Accept-Encoding"))
            ae = (req.header("Accept-Encoding") or "").lower()
            accepts = False
            for part in ae.split(","):
                token, _, params = part.strip().partition(";")
                if token.strip() in ("gzip", "*"):
                    accepts = not re.search(r"q\s*=\s*0(\.0*)?\s*$", params.strip())
            if accepts and body:
                body = gzip.compress(body)
                headers.append(("Content-Encoding", "gzip"))
        try:
            h.send_response_only(resp.status)
            h.send_header("Date", email.utils.formatdate(usegmt=True))
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if body and req.method != "HEAD":
                h.wfile.write(body)
        except OSError:
            h.close_connection = True

    # ------------------------------------------------------------------ control API (/_emulator/...)

    def _control(self, req):
        path = req.path[len("/_emulator"):].rstrip("/") or "/"
        m = req.method
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else {}
        except ValueError as e:
            raise APIError(400, "control: bad JSON: %s" % e)

        def ok(obj=None):
            return self._json(req, {"OK": True} if obj is None else obj)

        if path == "/state" and m == "GET":
            return ok(self.snapshot())
        if path == "/index":
            if m == "GET":
                return ok({"Index": self.current_index(), "Services": self.service_indexes()})
            if m in ("PUT", "POST"):
                if ci_get(body, "Bump", default=False):
                    return ok({"Index": self.bump_index()})
                if ci_get(body, "Backwards", default=None) is not None:
                    return ok({"Index": self.index_backwards(int(ci_get(body, "Backwards")),
                                                             release_waiters=ci_get(body, "ReleaseWaiters", default=True))})
                return ok({"Index": self.set_index(int(ci_get(body, "Index")),
                                                   release_waiters=ci_get(body, "ReleaseWaiters", default=True))})
        if path == "/catalog/register" and m in ("PUT", "POST"):
            return ok(self._control_register(body))
        if path == "/catalog/deregister" and m in ("PUT", "POST"):
            node = ci_get(body, "Node")
            sid = ci_get(body, "ServiceID", default=None)
            dc = ci_get(body, "Datacenter", default=None)
            if sid:
                self.deregister_instance(sid, node=node, datacenter=dc)
            else:
                self.remove_node(node, datacenter=dc)
            return ok()
        if path == "/check/status" and m in ("PUT", "POST"):
            self.set_check_status(ci_get(body, "CheckID"), ci_get(body, "Status"), ci_get(body, "Output", default=None),
                                  node=ci_get(body, "Node", default=None), datacenter=ci_get(body, "Datacenter", default=None))
            return ok()
        if path == "/node/health" and m in ("PUT", "POST"):
            self.set_node_health(ci_get(body, "Node"), ci_get(body, "Status"), ci_get(body, "Output", default=None),
                                 datacenter=ci_get(body, "Datacenter", default=None))
            return ok()
        if path == "/faults":
            if m == "GET":
                return ok(self.faults())
            if m in ("PUT", "POST"):
                rules = body if isinstance(body, list) else [body]
                return ok({"IDs": [self.add_fault(r) for r in rules]})
            if m == "DELETE":
                self.clear_faults()
                return ok()
        if path.startswith("/faults/") and m == "DELETE":
            return ok({"Removed": self.remove_fault(path[len("/faults/"):])})
        if path == "/listener/stop" and m in ("PUT", "POST"):
            self.stop_listening(close_existing=ci_get(body, "CloseExisting", default=True),
                                duration=ci_get(body, "For", "Duration", default=None))
            return ok()
        if path == "/listener/start" and m in ("PUT", "POST"):
            self.start_listening()
            return ok()
        if path == "/agent/restart" and m in ("PUT", "POST"):
            return ok({"Index": self.restart_agent(keep_services=ci_get(body, "KeepServices", default=False),
                                                   reset_index=ci_get(body, "ResetIndex", default=None),
                                                   down_for=ci_get(body, "DownFor", default=None))})
        if path == "/requests":
            if m == "GET":
                since = int(req.q("since") or 0)
                return ok(self.requests(path_prefix=req.q("path_prefix") or None, method=req.q("method") or None,
                                        since=since))
            if m == "DELETE":
                self.clear_requests()
                return ok()
        if path == "/acl/tokens" and m in ("PUT", "POST"):
            tok = self.add_acl_token(ci_get(body, "SecretID"), rules=ci_get(body, "Rules", "Preset", default=None),
                                     accessor=ci_get(body, "AccessorID", default=None))
            return ok(tok)
        if path.startswith("/acl/tokens/") and m == "DELETE":
            self.remove_acl_token(urllib.parse.unquote(path[len("/acl/tokens/"):]))
            return ok()
        if path == "/leader" and m in ("PUT", "POST"):
            self.set_leader(ci_get(body, "Leader", default=""))
            return ok()
        if path == "/connect/intentions":
            if m == "GET":
                return ok({"Default": self._intention_default, "Intentions": list(self._intentions)})
            if m in ("PUT", "POST"):
                self.set_intentions(ci_get(body, "Intentions", default=[]) or [],
                                    default=ci_get(body, "Default", default=None))
                return ok()
        if path == "/connect/rotate" and m in ("PUT", "POST"):
            return ok({"ActiveRootID": self.rotate_ca()})
        if path == "/config" and m in ("PUT", "POST"):
            self.configure(**{k: v for k, v in body.items()})
            return ok()
        if path == "/reap" and m in ("PUT", "POST"):
            return ok({"Reaped": self.reap_now()})
        if path == "/datacenters" and m in ("PUT", "POST"):
            for dc in ci_get(body, "Datacenters", default=[]) or []:
                self.add_datacenter(dc)
            return ok()
        if path == "/release" and m in ("PUT", "POST"):
            self.release_waiters()
            return ok()
        raise APIError(404, "emulator: unknown control endpoint %s %s" % (m, req.path))

    def _control_register(self, body):
        svc = ci_get(body, "Service", default={}) or {}
        name = ci_get(svc, "Service", "Name", default=None)
        if not name:
            raise APIError(400, "control: Service.Service (the service name) is required")
        checks = ci_get(body, "Checks", default=None)
        return self.register_instance(
            name, id=ci_get(svc, "ID", default=None), port=ci_get(svc, "Port", default=0) or 0,
            address=ci_get(svc, "Address", default="") or "", tags=ci_get(svc, "Tags", default=None),
            meta=ci_get(svc, "Meta", default=None), weights=ci_get(svc, "Weights", default=None),
            tagged_addresses=ci_get(svc, "TaggedAddresses", default=None),
            status=ci_get(body, "Status", default=PASSING), output=ci_get(body, "Output", default=None),
            node=ci_get(body, "Node", default=None), node_address=ci_get(body, "Address", default=None),
            datacenter=ci_get(body, "Datacenter", default=None), node_meta=ci_get(body, "NodeMeta", default=None),
            node_status=ci_get(body, "NodeStatus", default=None), checks=checks,
            kind=ci_get(svc, "Kind", default=""), namespace=ci_get(svc, "Namespace", default=None),
            partition=ci_get(svc, "Partition", default=None))

    # ------------------------------------------------------------------ Python control API

    def register_instance(self, service, id=None, port=0, address="", tags=None, meta=None, weights=None,
                          status=PASSING, output=None, node=None, node_address=None, datacenter=None,
                          node_meta=None, node_status=None, checks=None, tagged_addresses=None, kind="",
                          namespace=None, partition=None):
        """Register an instance of a service on another node, as if another
        agent had registered it. namespace / partition (enterprise=True):
        where it lives, "default" when not given. status is the status of its service check
        ("service:<id>"); pass checks=[{"CheckID","Name","Status","Output"}] for
        several checks, or checks=[] for none. Returns {"Node", "ServiceID", "CheckIDs", "Index"}."""
        dc = datacenter or self.datacenter
        with self._lock:
            self._ext_counter += 1
            sid = id or "%s-%d" % (service, self._ext_counter)
            node_name = node or "node-%s" % sid
            if (dc, node_name) in self._nodes:
                n = self._ensure_node(dc, node_name, node_address, meta=node_meta)
            else:
                n = self._ensure_node(dc, node_name, node_address or "127.0.0.1", meta=node_meta,
                                      status=node_status or PASSING)
            if node_status:
                self._set_node_health_locked(n, node_status, None)
            svc = Service()
            svc.kind = kind or ""
            svc.id = sid
            svc.name = service
            svc.tags = list(tags) if tags is not None else None
            svc.address = address or ""
            svc.meta = dict(meta) if meta is not None else None
            svc.port = int(port or 0)
            svc.namespace = namespace or "default"
            svc.partition = partition or "default"
            if weights:
                svc.weights = {"Passing": int(ci_get(weights, "Passing", default=1)),
                               "Warning": int(ci_get(weights, "Warning", default=1))}
            svc.tagged_addresses = {k: {"Address": ci_get(v, "Address", default=""), "Port": ci_get(v, "Port", default=0)}
                                    for k, v in (tagged_addresses or {}).items()}
            idx = self._next_index()
            old = n.services.get(sid)
            svc.create_index = old.create_index if old else idx
            svc.modify_index = idx
            n.services[sid] = svc
            if checks is None:
                checks = [{"CheckID": "service:%s" % sid, "Status": status, "Output": output}]
            keep = set()
            for spec in checks:
                cid = ci_get(spec, "CheckID", default=None) or "service:%s" % sid
                c = n.checks.get(cid) or Check()
                c.node = n.name
                c.check_id = cid
                c.name = ci_get(spec, "Name", default=None) or "Service '%s' check" % service
                c.status = ci_get(spec, "Status", default=PASSING) or PASSING
                if c.status not in VALID_STATUSES:
                    raise APIError(400, "control: bad status %r" % c.status)
                out = ci_get(spec, "Output", default=None)
                c.output = c.catalog_output = out if out is not None else ""
                c.notes = ci_get(spec, "Notes", default="") or ""
                c.service_id = sid
                c.service_name = service
                c.service_tags = list(tags or [])
                c.type = ci_get(spec, "Type", default="") or ""
                if c.create_index == 0:
                    c.create_index = idx
                c.modify_index = idx
                n.checks[cid] = c
                keep.add(cid)
            for cid in [cid for cid, c in n.checks.items() if c.service_id == sid and cid not in keep]:
                del n.checks[cid]
            self._tbl["services"] = idx
            self._tbl["checks"] = idx
            self._touch_service(dc, service, idx)
            if old is not None and old.name.lower() != service.lower():
                if self._service_exists(dc, old.name.lower()):
                    self._touch_service(dc, old.name, idx)
                else:
                    self._svc_idx.pop((dc, old.name.lower()), None)
                    self._extinction[dc] = idx
            self._changed()
            return {"Node": n.name, "ServiceID": sid, "CheckIDs": sorted(keep), "Index": idx}

    def deregister_instance(self, service_id, node=None, datacenter=None):
        """Remove a service instance (any node; node narrows the search)."""
        dc = datacenter or self.datacenter
        with self._lock:
            for (ndc, nname), n in list(self._nodes.items()):
                if ndc != dc or (node and nname != node):
                    continue
                if service_id in n.services:
                    self._remove_service(n, service_id)
                    return True
        raise APIError(404, "control: no service instance %r" % service_id)

    def remove_node(self, node, datacenter=None):
        dc = datacenter or self.datacenter
        with self._lock:
            n = self._nodes.get((dc, node))
            if n is None:
                raise APIError(404, "control: no node %r" % node)
            if n.local:
                raise APIError(400, "control: the agent's own node cannot be removed (use restart_agent)")
            for sid in list(n.services):
                self._remove_service(n, sid)
            del self._nodes[(dc, node)]
            idx = self._next_index()
            self._tbl["nodes"] = idx
            self._tbl["checks"] = idx
            self._changed()

    def _find_check(self, check_id, node=None, datacenter=None):
        dc = datacenter or self.datacenter
        if node is None:
            c = self._local.checks.get(check_id) if dc == self.datacenter else None
            if c is not None:
                return c
        for (ndc, nname), n in self._nodes.items():
            if ndc == dc and (node is None or nname == node) and check_id in n.checks:
                return n.checks[check_id]
        raise APIError(404, "control: no check %r" % check_id)

    def set_check_status(self, check_id, status, output=None, node=None, datacenter=None):
        """Set a check's status at once (synced to the catalog immediately).
        For a local TTL check this also restarts its TTL timer."""
        if status not in VALID_STATUSES:
            raise APIError(400, "control: bad status %r" % status)
        with self._lock:
            c = self._find_check(check_id, node, datacenter)
            if output is None:
                output = c.output
            if c.type == "ttl" and c.local:
                c.ttl_last_output = output
                c.ttl_deadline = time.monotonic() + c.ttl / SEC
            self._update_check(c, status, output, force_sync=True)
            self._cond.notify_all()

    def _set_node_health_locked(self, n, status, output):
        c = n.checks["serfHealth"]
        if output is None:
            output = "Agent alive and reachable" if status == PASSING else "Agent not live or unreachable"
        self._update_check(c, status, output, force_sync=True)

    def set_node_health(self, node, status, output=None, datacenter=None):
        """Set a node's serfHealth check (e.g. critical: the node failed)."""
        if status not in VALID_STATUSES:
            raise APIError(400, "control: bad status %r" % status)
        dc = datacenter or self.datacenter
        with self._lock:
            n = self._nodes.get((dc, node or self.node_name))
            if n is None:
                raise APIError(404, "control: no node %r" % node)
            self._set_node_health_locked(n, status, output)
            self._cond.notify_all()

    def add_fault(self, rule=None, **kw):
        """Add a fault rule; returns its id. Keys (case-insensitive):
        Method, Path (prefix), PathRegex, Skip (let N matches through first),
        Count (apply N times, default forever), Status + Body + Headers +
        ContentType (canned answer), Delay (seconds before handling),
        DelayAfter (seconds before sending the answer), Drop (close without
        answer), Reset (TCP RST), Hang (never answer until the connection is cut)."""
        spec = dict(rule or {})
        spec.update(kw)
        r = FaultRule(spec)
        with self._fault_lock:
            self._faults.append(r)
        return r.id

    def fail_next(self, n=1, status=500, body=None, path=None, method=None):
        """Answer the next n matching requests with status (default 500)."""
        return self.add_fault(Count=n, Status=status, Body=body, Path=path, Method=method)

    def delay(self, seconds, path=None, method=None, count=None, after=False):
        """Delay matching requests (before handling, or before answering with after=True)."""
        key = "DelayAfter" if after else "Delay"
        return self.add_fault({key: seconds, "Path": path, "Method": method, "Count": count})

    def faults(self):
        with self._fault_lock:
            return [r.to_json() for r in self._faults]

    def remove_fault(self, rule_id):
        with self._fault_lock:
            before = len(self._faults)
            self._faults = [r for r in self._faults if r.id != rule_id]
            return before != len(self._faults)

    def clear_faults(self):
        with self._fault_lock:
            self._faults = []

    def stop_listening(self, close_existing=True, duration=None):
        """Refuse connections: close the listening socket(s) and, by default,
        every open connection (blocked queries are cut). With duration, listen
        again on the same port after that many seconds."""
        if self._listening:
            self._stop_listeners(close_existing)
        elif close_existing:
            with self._lock:
                self._epoch += 1
                self._cond.notify_all()
            self._close_conns()
        self._restart_at = time.monotonic() + float(duration) if duration else None

    def start_listening(self):
        """Listen again on the same port (and unix socket)."""
        self._restart_at = None
        if not self._listening:
            self._start_listeners(self.port)

    def current_index(self):
        with self._lock:
            return self._index

    def service_index(self, service, datacenter=None):
        """The X-Consul-Index /v1/health/service/<service> would answer now."""
        with self._lock:
            return self._service_index(datacenter or self.datacenter, service)

    def service_indexes(self):
        with self._lock:
            return {"%s/%s" % k: v for k, v in sorted(self._svc_idx.items())}

    def bump_index(self):
        """A catalog write that changes nothing visible (like another
        service's registration): the global index moves."""
        with self._lock:
            idx = self._next_index()
            self._tbl["nodes"] = idx
            self._changed()
            return idx

    def set_index(self, value, release_waiters=True):
        """Set the raft index, possibly backwards (as after a snapshot restore
        or a rebuilt cluster): every stored index is clamped to it."""
        with self._lock:
            value = int(value)
            self._index = value
            for k in self._tbl:
                self._tbl[k] = min(self._tbl[k], value)
            for k in list(self._svc_idx):
                self._svc_idx[k] = min(self._svc_idx[k], value)
            for k in list(self._extinction):
                self._extinction[k] = min(self._extinction[k], value)
            for n in self._nodes.values():
                n.create_index = min(n.create_index, value)
                n.modify_index = min(n.modify_index, value)
                for s in n.services.values():
                    s.create_index = min(s.create_index, value)
                    s.modify_index = min(s.modify_index, value)
                for c in n.checks.values():
                    c.create_index = min(c.create_index, value)
                    c.modify_index = min(c.modify_index, value)
            self._roots_index = min(self._roots_index, value)
            for leaf in self._leaves.values():
                leaf["index"] = min(leaf["index"], max(value, 1))
            if release_waiters:
                self._release_gen += 1
            self._changed()
            return value

    def index_backwards(self, by=100, release_waiters=True):
        with self._lock:
            return self.set_index(max(0, self._index - int(by)), release_waiters)

    def release_waiters(self):
        """Answer every blocked query now with the current data."""
        with self._lock:
            self._release_gen += 1
            self._cond.notify_all()

    def restart_agent(self, keep_services=False, reset_index=None, down_for=None):
        """Simulate an agent restart. Without keep_services every local
        registration is lost (the agent had no data dir): services vanish from
        the catalog and TTL updates answer 404. reset_index=N also sets the
        raft index to N (a rebuilt cluster; the index goes backwards).
        down_for=seconds refuses connections for that long."""
        if down_for:
            self.stop_listening(close_existing=True, duration=down_for)
        with self._lock:
            if not keep_services:
                for sid in list(self._local.services):
                    self._remove_service(self._local, sid)
                for cid in [cid for cid, c in self._local.checks.items() if c.local]:
                    c = self._local.checks.pop(cid)
                    if c.runner:
                        c.runner.stop()
            else:
                for c in self._local.checks.values():
                    if c.type == "ttl" and c.local:
                        c.ttl_deadline = time.monotonic() + c.ttl / SEC
            self._leaves.clear()
            if reset_index is not None:
                self.set_index(int(reset_index))
            self._epoch += 1
            self._cond.notify_all()
            idx = self._index
        self._close_conns()
        return idx

    def requests(self, path_prefix=None, method=None, since=0):
        """The request log (agent API requests only, not /_emulator/ ones):
        dicts with Seq, Time, Method, Path, RawPath, Query, Args, Headers
        ([name, value] pairs as sent), Body, Status, Remote, Fault, DurationMs."""
        with self._log_lock:
            out = []
            for r in self._log:
                if r["Seq"] <= since:
                    continue
                if path_prefix and not r["Path"].startswith(path_prefix):
                    continue
                if method and r["Method"] != method.upper():
                    continue
                out.append(json.loads(json.dumps(r)))
            return out

    def clear_requests(self):
        with self._log_lock:
            self._log = []

    def wait_for_request(self, predicate=None, path_prefix=None, method=None, timeout=5.0, since=0):
        """Wait until a logged request matches; returns it (or None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._log_lock:
            while True:
                for r in self._log:
                    if r["Seq"] <= since:
                        continue
                    if path_prefix and not r["Path"].startswith(path_prefix):
                        continue
                    if method and r["Method"] != method.upper():
                        continue
                    if predicate is None or predicate(r):
                        return json.loads(json.dumps(r))
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    return None
                self._log_cond.wait(remaining)

    def wait_for(self, predicate, timeout=5.0, interval=0.02):
        """Poll predicate() until true; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(interval)

    def add_acl_token(self, secret, rules=None, accessor=None, description=""):
        """Add a token (ACLs must be on). rules: see parse_acl_rules; None = no
        rights (the default policy applies). secret "anonymous" sets the
        rights of requests without a token."""
        if not secret:
            raise APIError(400, "control: SecretID is required")
        mgmt, parsed = parse_acl_rules(rules)
        tok = Token(secret, accessor=(ANONYMOUS_ACCESSOR if secret == "anonymous" else accessor),
                    management=mgmt, rules=parsed, description=description)
        with self._lock:
            self._tokens[secret] = tok
        return tok.to_json()

    def remove_acl_token(self, secret):
        with self._lock:
            self._tokens.pop(secret, None)

    def set_leader(self, leader):
        """"" = no known leader: catalog/health reads answer 500 "No cluster
        leader" unless ?stale; /v1/status/leader answers ""."""
        with self._lock:
            self._leader = leader or ""
            self._cond.notify_all()

    def add_datacenter(self, dc):
        with self._lock:
            self._datacenters.add(dc)

    def set_intentions(self, intentions, default=None):
        """Replace all intentions. Each: {"SourceName", "DestinationName",
        "Action": "allow"|"deny", "Permissions": [...] (L7, reported as deny)}.
        default "allow"/"deny" overrides the ACL-derived default."""
        out = []
        for ix in intentions:
            src = ci_get(ix, "SourceName", "Source", default="*")
            dst = ci_get(ix, "DestinationName", "Destination", default="*")
            action = (ci_get(ix, "Action", default="allow") or "allow").lower()
            perms = ci_get(ix, "Permissions", default=None) or []
            prec = {(False, False): 9, (True, False): 8, (False, True): 6, (True, True): 5}[(src == "*", dst == "*")]
            out.append({"ID": ci_get(ix, "ID", default=None) or str(uuid.uuid4()), "SourceName": src,
                        "DestinationName": dst, "Action": action, "Permissions": perms, "Precedence": prec})
        with self._lock:
            self._intentions = out
            if default is not None:
                self._intention_default = default.lower()

    def rotate_ca(self):
        """New active root; the old one stays listed (not active). Leaf
        certificates are re-issued on their next fetch; blocked leaf and
        roots queries return."""
        self._ensure_ca()
        with self._lock:
            idx = self._next_index()
        root = self._ca.new_root(idx)
        with self._lock:
            self._roots_index = idx
            self._changed()
        return root["ID"]

    def configure(self, **kw):
        """Change timings at run time: reaper_interval, min_deregister_after,
        min_check_interval, check_update_interval, leaf_ttl, default_wait,
        max_wait, acl_default_policy (keys may be CamelCase)."""
        names = {"reaperinterval": "reaper_interval", "minderegisterafter": "min_deregister_after",
                 "mincheckinterval": "min_check_interval", "checkupdateinterval": "check_update_interval",
                 "leafttl": "leaf_ttl", "defaultwait": "default_wait", "maxwait": "max_wait",
                 "acldefaultpolicy": "acl_default_policy"}
        with self._lock:
            for k, v in kw.items():
                attr = names.get(k.replace("_", "").lower())
                if attr is None:
                    raise APIError(400, "control: unknown setting %r" % k)
                setattr(self, attr, v if attr == "acl_default_policy" else float(v))

    def reap_now(self):
        with self._lock:
            r = self._reap()
            self._last_reap = time.monotonic()
            return r

    def leaf_index(self, service):
        with self._lock:
            leaf = self._leaves.get(service)
            return leaf["index"] if leaf else 0

    def snapshot(self):
        """The whole state as JSON-able data (for debugging and assertions)."""
        with self._lock:
            nodes = []
            for (dc, name), n in sorted(self._nodes.items()):
                nodes.append({"Node": self._node_json(n), "Local": n.local,
                              "Services": [self._service_json(s) for _, s in sorted(n.services.items())],
                              "Checks": [dict(self._check_json(c), AgentOutput=c.output)
                                         for _, c in sorted(n.checks.items())]})
            return {"Index": self._index, "Tables": dict(self._tbl), "Leader": self._leader,
                    "Datacenters": sorted(self._datacenters), "Nodes": nodes,
                    "Listening": self._listening, "Port": self.port}

    # ------------------------------------------------------------------ persistence (--state-file)

    def _save_state(self):
        if not self.state_file:
            return
        with self._lock:
            local = []
            for sid, s in sorted(self._local.services.items()):
                if s.definition is None:
                    continue
                checks = {c.check_id: {"Status": c.status, "Output": c.output}
                          for c in self._local.checks.values() if c.service_id == sid}
                local.append({"Definition": s.definition, "Checks": checks})
            external = []
            for (dc, name), n in sorted(self._nodes.items()):
                if n.local:
                    continue
                for sid, s in sorted(n.services.items()):
                    external.append({"Datacenter": dc, "Node": name, "Address": n.address,
                                     "NodeMeta": {k: v for k, v in n.meta.items() if not k.startswith("consul-")},
                                     "NodeStatus": n.checks["serfHealth"].status,
                                     "Service": {"ID": sid, "Service": s.name, "Tags": s.tags, "Address": s.address,
                                                 "Port": s.port, "Meta": s.meta, "Weights": s.weights,
                                                 "TaggedAddresses": s.tagged_addresses, "Kind": s.kind},
                                     "Checks": [{"CheckID": c.check_id, "Name": c.name, "Status": c.status,
                                                 "Output": c.catalog_output}
                                                for c in n.checks.values() if c.service_id == sid]})
            state = {"Version": 1, "Index": self._index, "NodeID": self.node_id, "ClusterID": self.cluster_id,
                     "LocalServices": local, "External": external,
                     "Tokens": [t.to_json() for s, t in self._tokens.items()]}
        tmp = self.state_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1, default=str)
            os.replace(tmp, self.state_file)
        except OSError:
            pass

    def _load_state(self):
        with open(self.state_file) as f:
            state = json.load(f)
        with self._lock:
            self.node_id = state.get("NodeID") or self.node_id
            self._local.id = self.node_id
            self.cluster_id = state.get("ClusterID") or self.cluster_id
            for ent in state.get("LocalServices", []):
                sd = ent["Definition"]
                self._register_local(sd, self._check_types(sd), False)
                for cid, st in (ent.get("Checks") or {}).items():
                    c = self._local.checks.get(cid)
                    if c is not None:
                        self._update_check(c, st.get("Status", CRITICAL), st.get("Output", ""), force_sync=True)
            for ext in state.get("External", []):
                self._control_register(ext)
            for t in state.get("Tokens", []):
                rules = []
                for res, lst in (t.get("Rules") or {}).items():
                    for r in lst:
                        rules.append({"Resource": res, "Name": r["Name"], "Prefix": r["Prefix"], "Access": r["Access"]})
                if t.get("Management"):
                    mgmt, parsed = True, {}
                else:
                    mgmt, parsed = parse_acl_rules(rules)
                self._tokens[t["SecretID"]] = Token(t["SecretID"], t.get("AccessorID"), mgmt, parsed,
                                                    t.get("Description", ""))
            saved = int(state.get("Index") or 0)
            if saved > self._index:
                self._index = saved


# ---------------------------------------------------------------------------
# HTTP client for the control API (when the emulator runs as a subprocess)
# ---------------------------------------------------------------------------

class ControlClient:
    """Drive an emulator running in another process through /_emulator/."""

    def __init__(self, base_url, timeout=10.0):
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + "/_emulator" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=self.timeout) as r:
            return json.loads(r.read().decode() or "null")

    def register_instance(self, service, **kw):
        body = {"Node": kw.pop("node", None), "Address": kw.pop("node_address", None),
                "Datacenter": kw.pop("datacenter", None), "Status": kw.pop("status", PASSING),
                "NodeMeta": kw.pop("node_meta", None), "NodeStatus": kw.pop("node_status", None),
                "Output": kw.pop("output", None)}
        if "checks" in kw:
            body["Checks"] = kw.pop("checks")
        svc = {"Service": service}
        for k, v in kw.items():
            svc[{"id": "ID", "tagged_addresses": "TaggedAddresses"}.get(k, k[:1].upper() + k[1:])] = v
        body["Service"] = svc
        return self._call("POST", "/catalog/register", {k: v for k, v in body.items() if v is not None})

    def deregister_instance(self, service_id, node=None):
        return self._call("POST", "/catalog/deregister", {"ServiceID": service_id, "Node": node})

    def set_check_status(self, check_id, status, output=None, node=None):
        return self._call("POST", "/check/status", {"CheckID": check_id, "Status": status, "Output": output,
                                                    "Node": node})

    def set_node_health(self, node, status, output=None):
        return self._call("POST", "/node/health", {"Node": node, "Status": status, "Output": output})

    def add_fault(self, **rule):
        return self._call("POST", "/faults", rule)["IDs"][0]

    def fail_next(self, n=1, status=500, body=None, path=None, method=None):
        return self.add_fault(Count=n, Status=status, Body=body, Path=path, Method=method)

    def clear_faults(self):
        return self._call("DELETE", "/faults")

    def stop_listening(self, close_existing=True, duration=None):
        return self._call("POST", "/listener/stop", {"CloseExisting": close_existing, "For": duration})

    def set_index(self, value, release_waiters=True):
        return self._call("POST", "/index", {"Index": value, "ReleaseWaiters": release_waiters})["Index"]

    def index_backwards(self, by=100):
        return self._call("POST", "/index", {"Backwards": by})["Index"]

    def current_index(self):
        return self._call("GET", "/index")["Index"]

    def restart_agent(self, keep_services=False, reset_index=None, down_for=None):
        return self._call("POST", "/agent/restart", {"KeepServices": keep_services, "ResetIndex": reset_index,
                                                     "DownFor": down_for})["Index"]

    def requests(self, path_prefix=None, method=None, since=0):
        q = urllib.parse.urlencode({k: v for k, v in (("path_prefix", path_prefix), ("method", method),
                                                      ("since", since)) if v})
        return self._call("GET", "/requests" + ("?" + q if q else ""))

    def clear_requests(self):
        return self._call("DELETE", "/requests")

    def add_acl_token(self, secret, rules=None):
        return self._call("POST", "/acl/tokens", {"SecretID": secret, "Rules": rules})

    def set_leader(self, leader):
        return self._call("POST", "/leader", {"Leader": leader})

    def set_intentions(self, intentions, default=None):
        return self._call("POST", "/connect/intentions", {"Intentions": intentions, "Default": default})

    def rotate_ca(self):
        return self._call("POST", "/connect/rotate", {})["ActiveRootID"]

    def configure(self, **kw):
        return self._call("POST", "/config", kw)

    def state(self):
        return self._call("GET", "/state")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _duration_arg(text):
    try:
        return float(text)
    except ValueError:
        return parse_go_duration(text) / SEC


def main(argv=None):
    ap = argparse.ArgumentParser(description="Consul agent HTTP API emulator (test fixture)")
    ap.add_argument("--http", default="127.0.0.1:8500", help="HOST:PORT to listen on (port 0: any free port)")
    ap.add_argument("--unix", default=None, help="also serve the API on this unix socket")
    ap.add_argument("--control-http", default=None,
                    help="HOST:PORT of a separate listener for /_emulator/ only (stays up while the agent "
                         "listener is stopped)")
    ap.add_argument("--acl-token", default=None, help="enable ACLs (default policy deny); this is the management token")
    ap.add_argument("--acl-default-policy", default="deny", choices=("allow", "deny"))
    ap.add_argument("--datacenter", default="dc1")
    ap.add_argument("--node-name", default="node1")
    ap.add_argument("--node-address", default="127.0.0.1")
    ap.add_argument("--state-file", default=None, help="persist registrations here and reload them at start")
    ap.add_argument("--port-file", default=None, help="write the bound port here once listening")
    ap.add_argument("--reaper-interval", type=_duration_arg, default=30.0)
    ap.add_argument("--min-deregister-after", type=_duration_arg, default=60.0)
    ap.add_argument("--min-check-interval", type=_duration_arg, default=1.0)
    ap.add_argument("--check-update-interval", type=_duration_arg, default=300.0)
    ap.add_argument("--default-wait", type=_duration_arg, default=300.0)
    ap.add_argument("--max-wait", type=_duration_arg, default=600.0)
    ap.add_argument("--leaf-ttl", type=_duration_arg, default=72 * 3600.0)
    ap.add_argument("--no-check-stagger", action="store_true", help="run interval checks at once, not after a random pause")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--enterprise", action="store_true",
                    help="accept ns / partition and keep services per namespace (Consul Enterprise)")
    args = ap.parse_args(argv)

    emu = ConsulEmulator(http_addr=args.http, unix_path=args.unix, acl_token=args.acl_token,
                         acl_default_policy=args.acl_default_policy, datacenter=args.datacenter,
                         node_name=args.node_name, node_address=args.node_address, state_file=args.state_file,
                         reaper_interval=args.reaper_interval, min_deregister_after=args.min_deregister_after,
                         min_check_interval=args.min_check_interval,
                         check_update_interval=args.check_update_interval, check_stagger=not args.no_check_stagger,
                         default_wait=args.default_wait, max_wait=args.max_wait, leaf_ttl=args.leaf_ttl,
                         control_http=args.control_http, verbose=args.verbose, enterprise=args.enterprise)
    done = threading.Event()

    def _sig(_signum, _frame):
        done.set()

    # handlers first: a test may send SIGTERM as soon as it sees the port
    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGINT, _sig)
    port = emu.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    print(json.dumps({"event": "listening", "http": emu.address, "port": port, "unix": args.unix,
                      "control_port": emu.control_port}), flush=True)
    while not done.wait(0.5):
        pass
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

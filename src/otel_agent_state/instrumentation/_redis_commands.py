"""What a Redis command reads and writes, and the versions of what it saw (pure).

`effects(args, response)` maps one command (as redis-py passes it to `execute_command`, with
the parsed response) to the keys it read and wrote and a description of each value.
`Versions` turns those descriptions into SPEC §3 version strings: a configured JSON or hash
field, else a keyed digest of the value exactly as Redis stores it, so a SET and a later
GET of the same bytes give the same version. No OpenTelemetry or redis imports here.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from ..core.config import FactRule, Settings
from ..core.model import VersionError, parse_version
from ._state_cache import StateCache

STORE = "redis"
MAX_KEY_CHARS = 200  # longer key texts end in a hash of the whole key
MAX_JSON_BYTES = 1 << 20  # string values parsed for a json_field version, at most
_KEY_SAFE = "".join(c for c in string.printable if c not in "%\t\n\r\x0b\x0c")

ValueKind = Literal[
    "absent",  # the key does not exist (or was just deleted)
    "str",  # a string value, as stored (bytes)
    "hash",  # a whole hash: {field: value}
    "hash_part",  # some fields of a hash (None: field absent)
    "hash_set",  # fields a write set (a hash's other fields unknown)
    "json",  # a whole JSON document (parsed)
    "json_part",  # the value at `path` inside a JSON document
    "refetch_hash",  # changed in a way the command does not show: read it again
    "refetch_json",
]


@dataclass(frozen=True, slots=True)
class Value:
    kind: ValueKind
    data: Any = None
    path: str | None = None


ABSENT = Value("absent")


@dataclass(frozen=True, slots=True)
class Effect:
    op: Literal["r", "w"]
    key: Any  # as the application passed it (str, bytes, int, ...)
    value: Value
    # A write that merges these hash fields into the stored hash (HSET, HDEL), keeping the
    # others: the server's read-modify-write. None: the write replaces the whole value.
    fields: tuple[Any, ...] | None = None


UNKNOWN: Any = object()  # the response is not known (a pipeline that raised)

# ---------------------------------------------------------------- commands


def _is_error(response: Any) -> bool:
    return isinstance(response, BaseException)


def _str_value(response: Any) -> Value:
    return ABSENT if response is None else Value("str", response)


def _upper(arg: Any) -> str:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("latin-1").upper()
    return str(arg).upper()


def _get(args: Sequence[Any], resp: Any) -> list[Effect]:
    if resp is UNKNOWN or len(args) < 2:
        return []
    return [Effect("r", args[1], _str_value(resp))]


def _getdel(args: Sequence[Any], resp: Any) -> list[Effect]:
    if resp is UNKNOWN or len(args) < 2:
        return []
    out = [Effect("r", args[1], _str_value(resp))]
    if resp is not None:
        out.append(Effect("w", args[1], ABSENT))
    return out


def _getset(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3:
        return []
    out = [] if resp is UNKNOWN else [Effect("r", args[1], _str_value(resp))]
    out.append(Effect("w", args[1], Value("str", args[2])))
    return out


def _mget(args: Sequence[Any], resp: Any) -> list[Effect]:
    keys = args[1:]
    if resp is UNKNOWN or not isinstance(resp, (list, tuple)) or len(resp) != len(keys):
        return []
    return [Effect("r", key, _str_value(value)) for key, value in zip(keys, resp, strict=True)]


def _set(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3:
        return []
    flags = {_upper(a) for a in args[3:] if isinstance(a, (str, bytes))}
    key, value = args[1], Value("str", args[2])
    if "GET" in flags:
        if resp is UNKNOWN:
            return []
        # redis-py returns the old value only when told (`set(get=True)`); a raw
        # execute_command gets its SET callback's bool: True if the old value was "OK",
        # False for any other (non-empty) value, which is then unknown.
        out = (
            [] if resp is False else [Effect("r", key, _str_value(b"OK" if resp is True else resp))]
        )
        done = (resp is None) if "NX" in flags else (resp is not None) if "XX" in flags else True
        if done:
            out.append(Effect("w", key, value))
        return out
    if resp is UNKNOWN:
        return [] if flags & {"NX", "XX"} else [Effect("w", key, value)]
    return [Effect("w", key, value)] if resp else []


def _setnx(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3 or resp is UNKNOWN or not resp:
        return []
    return [Effect("w", args[1], Value("str", args[2]))]


def _setex(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 4 or (resp is not UNKNOWN and not resp):
        return []
    return [Effect("w", args[1], Value("str", args[3]))]


def _mset(args: Sequence[Any], resp: Any) -> list[Effect]:
    pairs = args[1:]
    if len(pairs) % 2 or (resp is not UNKNOWN and not resp):
        return []
    return [Effect("w", pairs[i], Value("str", pairs[i + 1])) for i in range(0, len(pairs), 2)]


def _msetnx(args: Sequence[Any], resp: Any) -> list[Effect]:
    return [] if resp is UNKNOWN else _mset(args, resp)


def _delete(args: Sequence[Any], resp: Any) -> list[Effect]:
    # Deleting an absent key leaves it absent: `none` either way.
    return [Effect("w", key, ABSENT) for key in args[1:]]


def _expire(args: Sequence[Any], resp: Any) -> list[Effect]:
    """A TTL that is not positive deletes the key at once; a positive one changes nothing
    yet (the value stays readable until it expires), so it is not a write."""
    if len(args) < 3 or resp is UNKNOWN or not resp:
        return []
    try:
        ttl = int(args[2])
    except (TypeError, ValueError):
        return []
    return [Effect("w", args[1], ABSENT)] if ttl <= 0 else []


def _counter(sign: int, default: int | None) -> Callable[[Sequence[Any], Any], list[Effect]]:
    def handler(args: Sequence[Any], resp: Any) -> list[Effect]:
        if len(args) < 2 or resp is UNKNOWN or not isinstance(resp, int):
            return []
        try:
            step = sign * (int(args[2]) if default is None else default)
        except (IndexError, TypeError, ValueError):
            return []
        out: list[Effect] = []
        before = resp - step
        # An atomic read-modify-write: record what it read (its own basis, so two INCRs are
        # never a lost update). 0 before is ambiguous (absent or "0"): not recorded.
        if before != 0:
            out.append(Effect("r", args[1], Value("str", b"%d" % before)))
        out.append(Effect("w", args[1], Value("str", b"%d" % resp)))
        return out

    return handler


def _hget(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3 or resp is UNKNOWN:
        return []
    return [Effect("r", args[1], Value("hash_part", {args[2]: resp}))]


def _hmget(args: Sequence[Any], resp: Any) -> list[Effect]:
    fields = args[2:]
    if resp is UNKNOWN or not isinstance(resp, (list, tuple)) or len(resp) != len(fields):
        return []
    return [Effect("r", args[1], Value("hash_part", dict(zip(fields, resp, strict=True))))]


def _hgetall(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 2 or resp is UNKNOWN:
        return []
    if isinstance(resp, list):  # RESP2 without the callback: flat field/value list
        resp = dict(zip(resp[::2], resp[1::2], strict=False))
    if not isinstance(resp, Mapping):
        return []
    return [Effect("r", args[1], Value("hash", dict(resp)) if resp else ABSENT)]


def _hset(args: Sequence[Any], resp: Any) -> list[Effect]:
    pairs = args[2:]
    if len(args) < 4 or len(pairs) % 2:
        return []
    fields = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
    return [Effect("w", args[1], Value("hash_set", fields), tuple(fields))]


def _hsetnx(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 4 or resp is UNKNOWN or not resp:
        return []
    return [Effect("w", args[1], Value("hash_set", {args[2]: args[3]}), (args[2],))]


def _hdel(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3 or resp is UNKNOWN or not resp:
        return []
    return [Effect("w", args[1], Value("refetch_hash"), tuple(args[2:]))]


def _root(path: Any) -> bool:
    return _upper(path).strip() in (".", "$")


def _json_get(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 2 or resp is UNKNOWN:
        return []
    paths = [a for a in args[2:] if _upper(a) not in ("NOESCAPE",)]
    if resp is None:
        return [Effect("r", args[1], ABSENT)]
    if not paths or (len(paths) == 1 and _root(paths[0])):
        path = _upper(paths[0]) if paths else "."
        if path.startswith("$"):  # JSONPath answers are lists of matches
            if not isinstance(resp, list) or len(resp) != 1:
                return []
            resp = resp[0]
        return [Effect("r", args[1], Value("json", resp))]
    if len(paths) == 1:
        path = str(paths[0]) if not isinstance(paths[0], bytes) else paths[0].decode("latin-1")
        value = resp
        if path.startswith("$"):
            if not isinstance(resp, list) or len(resp) != 1:
                return []
            value = resp[0]
        return [Effect("r", args[1], Value("json_part", value, path))]
    return []


def _json_set(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 4 or (resp is not UNKNOWN and not resp):
        return []
    flags = {_upper(a) for a in args[4:]}
    if resp is UNKNOWN and flags & {"NX", "XX"}:
        return []
    if _root(args[2]):
        return [Effect("w", args[1], Value("json", _parse_json(args[3])))]
    return [Effect("w", args[1], Value("refetch_json"))]


def _json_del(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 2 or (resp is not UNKNOWN and not resp):
        return []
    if len(args) < 3 or _root(args[2]):
        return [Effect("w", args[1], ABSENT)]
    return [Effect("w", args[1], Value("refetch_json"))]


def _json_mget(args: Sequence[Any], resp: Any) -> list[Effect]:
    if len(args) < 3 or resp is UNKNOWN or not _root(args[-1]):
        return []
    keys = args[1:-1]
    if not isinstance(resp, list) or len(resp) != len(keys):
        return []
    dollar = _upper(args[-1]).strip() == "$"
    out = []
    for key, doc in zip(keys, resp, strict=True):
        if doc is None:
            out.append(Effect("r", key, ABSENT))
        elif dollar:
            if isinstance(doc, list) and len(doc) == 1:
                out.append(Effect("r", key, Value("json", doc[0])))
        else:
            out.append(Effect("r", key, Value("json", doc)))
    return out


_NO_VALUE: Any = object()


def _parse_json(text: Any) -> Any:
    """A JSON.SET argument as a document; the raw text if it does not parse."""
    try:
        raw = bytes(text) if isinstance(text, (bytearray, memoryview)) else text
        if isinstance(raw, (str, bytes)) and len(raw) <= MAX_JSON_BYTES:
            return json.loads(raw)
    except (ValueError, TypeError):
        pass
    return _Raw(text)


@dataclass(frozen=True, slots=True)
class _Raw:
    """A JSON.SET argument that is not JSON (the server refuses it; digest it as is)."""

    text: Any


Handler = Callable[[Sequence[Any], Any], list[Effect]]

# command -> (agentstate.op before the response is known, handler)
COMMANDS: dict[str, tuple[str, Handler]] = {
    "GET": ("read", _get),
    "GETEX": ("read", _get),
    "GETDEL": ("read_write", _getdel),
    "GETSET": ("read_write", _getset),
    "MGET": ("read", _mget),
    "SET": ("write", _set),
    "SETNX": ("write", _setnx),
    "SETEX": ("write", _setex),
    "PSETEX": ("write", _setex),
    "MSET": ("write", _mset),
    "MSETNX": ("write", _msetnx),
    "DEL": ("delete", _delete),
    "UNLINK": ("delete", _delete),
    "EXPIRE": ("delete", _expire),
    "PEXPIRE": ("delete", _expire),
    "INCR": ("read_write", _counter(1, 1)),
    "DECR": ("read_write", _counter(-1, 1)),
    "INCRBY": ("read_write", _counter(1, None)),
    "DECRBY": ("read_write", _counter(-1, None)),
    "HGET": ("read", _hget),
    "HMGET": ("read", _hmget),
    "HGETALL": ("read", _hgetall),
    "HSET": ("write", _hset),
    "HMSET": ("write", _hset),
    "HSETNX": ("write", _hsetnx),
    "HDEL": ("write", _hdel),
    "JSON.GET": ("read", _json_get),
    "JSON.MGET": ("read", _json_mget),
    "JSON.SET": ("write", _json_set),
    "JSON.DEL": ("delete", _json_del),
    "JSON.FORGET": ("delete", _json_del),
}


def command_name(args: Sequence[Any]) -> str:
    """The command's name, upper case ("" if there is none); bounded for span names."""
    if not args:
        return ""
    name = args[0]
    if isinstance(name, (bytes, bytearray, memoryview)):
        text = bytes(name)[:64].decode("utf-8", "replace")
    else:
        text = str(name)[:64]
    return text.upper()


def first_key(args: Sequence[Any]) -> Any:
    return args[1] if len(args) > 1 else None


def written_keys(name: str, args: Sequence[Any]) -> list[Any]:
    """Keys a command of ours may write, whatever its response (for a command whose outcome
    is unknown). Read-only and unknown commands: none."""
    entry = COMMANDS.get(name)
    if entry is None or entry[0] == "read" or len(args) < 2:
        return []
    if name in ("DEL", "UNLINK"):
        return list(args[1:])
    if name in ("MSET", "MSETNX"):
        return list(args[1::2])
    return [args[1]]


def effects(name: str, args: Sequence[Any], response: Any) -> list[Effect]:
    """Keys `args` read and wrote given `response` (UNKNOWN: only what the arguments show).
    An error response (a pipeline's failed command) changed nothing."""
    entry = COMMANDS.get(name)
    if entry is None or _is_error(response):
        return []
    try:
        return entry[1](args, response)
    except (TypeError, ValueError):  # arguments redis-py itself would refuse
        return []


# ---------------------------------------------------------------- keys


def key_text(raw: bytes) -> str:
    """A key as it appears in fact keys: printable text as is; other bytes (and `%`)
    percent-encoded; longer than MAX_KEY_CHARS: a prefix and a hash of the whole key."""
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "%" in text or not text.isprintable():
        text = quote(raw, safe=_KEY_SAFE)
    if len(text) > MAX_KEY_CHARS:
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        text = f"{text[: MAX_KEY_CHARS - 40]}~{digest}"
    return text


def to_bytes(value: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """A value as redis-py sends (and Redis stores) it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    if isinstance(value, str):
        try:
            return value.encode(encoding, errors)
        except (UnicodeError, LookupError):
            return value.encode("utf-8", "surrogatepass")
    return repr(value).encode("utf-8", "replace")


# ---------------------------------------------------------------- versions


def _lp(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data


def canonical_json(doc: Any) -> bytes:
    if isinstance(doc, _Raw):
        return b"raw:" + to_bytes(doc.text)
    try:
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
        ).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):  # keys JSON cannot have (a decoder would not make them)
        return b"repr:" + repr(doc).encode("utf-8", "surrogatepass")


def field_version(settings: Settings, value: Any) -> str:
    """A configured version field's value as a version (SPEC §3 kinds)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return settings.digest(b"v" + bytes(value))
    if isinstance(value, bool):
        return f"n:{int(value)}"
    if isinstance(value, int):
        return f"n:{value}"
    if isinstance(value, float):
        return f"n:{int(value)}" if value.is_integer() else f"t:{round(value * 1e9)}"
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit() and len(text) < 40:
            return f"n:{int(text)}"
        try:
            return parse_version(f"t:{text}").text
        except VersionError:
            return settings.digest(b"v" + text.encode("utf-8", "surrogatepass"))
    return settings.digest(b"v" + canonical_json(value))


def json_path(path: str) -> tuple[str, ...]:
    """`version`, `.version`, `$.version`, `$.meta.version` -> ("meta", "version")."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    return tuple(part for part in text.strip(".").split(".") if part)


def _dig(doc: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(doc, Mapping) or part not in doc:
            return _NO_VALUE
        doc = doc[part]
    return doc


# Recent whole-hash states per key (version and per-field digests), so a read of some
# fields maps to the version of the whole hash.
hash_states: StateCache[bytes] = StateCache(max_keys=10_000, depth=8)


class Versions:
    """Version strings for the values of one client (its encoding decides the bytes)."""

    def __init__(self, settings: Settings, encoding: str = "utf-8", errors: str = "strict"):
        self.settings = settings
        self.encoding = encoding
        self.errors = errors

    def raw(self, value: Any) -> bytes:
        return to_bytes(value, self.encoding, self.errors)

    def version(self, physical: str, rule: FactRule | None, value: Value) -> str | None:
        """The version `value` shows, or None when it does not show one (a partial read of
        an unknown state, or a value that must be read again)."""
        try:
            return self._version(physical, rule, value)
        except (TypeError, ValueError, AttributeError, RecursionError):
            return None

    def _version(self, physical: str, rule: FactRule | None, value: Value) -> str | None:
        kind = value.kind
        spec = rule.version if rule is not None else None
        if kind == "absent":
            return "none"
        if kind == "str":
            data = self.raw(value.data)
            if spec is not None and spec.json_field:
                found = self._json_field_of_bytes(data, spec.json_field)
                if found is not _NO_VALUE:
                    return field_version(self.settings, found)
            return self.settings.digest(b"s" + data)
        if kind == "json":
            if spec is not None and spec.json_field:
                found = _dig(value.data, json_path(spec.json_field))
                if found is not _NO_VALUE:
                    return field_version(self.settings, found)
            return self.settings.digest(b"j" + canonical_json(value.data))
        if kind == "json_part":
            if (
                spec is not None
                and spec.json_field
                and value.path is not None
                and json_path(value.path) == json_path(spec.json_field)
            ):
                return field_version(self.settings, value.data)
            return None
        if kind == "hash":
            return self._whole_hash(physical, spec.hash_field if spec else None, value.data)
        if kind in ("hash_part", "hash_set"):
            fields = {self.raw(k): v for k, v in value.data.items()}
            if spec is not None and spec.hash_field:
                found = fields.get(self.raw(spec.hash_field))
                if found is not None:
                    version = field_version(self.settings, found)
                    if kind == "hash_set":  # the fields it set are known at this version
                        known = {n: self._field_digest(n, self.raw(v)) for n, v in fields.items()}
                        hash_states.add(self.settings.digest_key, physical, version, known)
                    return version
            if kind == "hash_set":
                return None  # the hash's other fields are unknown: read it again
            seen: dict[bytes, str | None] = {
                name: None if v is None else self._field_digest(name, self.raw(v))
                for name, v in fields.items()
            }
            return hash_states.match(self.settings.digest_key, physical, seen)
        return None

    def _whole_hash(self, physical: str, hash_field: str | None, data: Mapping[Any, Any]) -> str:
        fields = {self.raw(k): self.raw(v) for k, v in data.items()}
        version: str | None = None
        if hash_field is not None:
            found = fields.get(self.raw(hash_field))
            if found is not None:
                version = field_version(self.settings, found)
        if version is None:
            body = b"".join(_lp(k) + _lp(fields[k]) for k in sorted(fields))
            version = self.settings.digest(b"H" + body)
        digests = {name: self._field_digest(name, v) for name, v in fields.items()}
        hash_states.add(self.settings.digest_key, physical, version, digests)
        return version

    def _field_digest(self, name: bytes, value: bytes) -> str:
        return self.settings.digest(b"f" + _lp(name) + value)

    @staticmethod
    def _json_field_of_bytes(data: bytes, field: str) -> Any:
        if len(data) > MAX_JSON_BYTES or data.lstrip()[:1] != b"{":
            return _NO_VALUE
        try:
            doc = json.loads(data)
        except ValueError:
            return _NO_VALUE
        return _dig(doc, json_path(field))

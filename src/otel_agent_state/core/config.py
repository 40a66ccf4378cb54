"""Settings (SPEC §7): `OTEL_AGENTSTATE_*` environment variables and TOML fact rules.

Bad configuration is an error at start-up that names the file, the line and the rule,
and says what would be accepted. Nothing here falls back silently to a default.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_CONFIG = "OTEL_AGENTSTATE_CONFIG"
ENV_CONSISTENCY = "OTEL_AGENTSTATE_CONSISTENCY"
ENV_ON_ANOMALY = "OTEL_AGENTSTATE_ON_ANOMALY"
ENV_CLOCK_SKEW_MS = "OTEL_AGENTSTATE_CLOCK_SKEW_MS"
ENV_MAX_TRACES = "OTEL_AGENTSTATE_MAX_TRACES"
ENV_MAX_OBSERVATIONS = "OTEL_AGENTSTATE_MAX_OBSERVATIONS"
ENV_MAX_FACTS_PER_TRACE = "OTEL_AGENTSTATE_MAX_FACTS_PER_TRACE"
ENV_MAX_EVENTS_PER_FACT = "OTEL_AGENTSTATE_MAX_EVENTS_PER_FACT"
ENV_TRACE_TTL_MS = "OTEL_AGENTSTATE_TRACE_TTL_MS"
ENV_DIGEST_KEY = "OTEL_AGENTSTATE_DIGEST_KEY"

OnAnomaly = Literal["record", "raise"]
ConsistencyKind = Literal["linearizable", "session", "bounded", "eventual"]

_RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VERSION_FIELDS = ("column", "json_field", "hash_field", "payload_field")
_RULE_FIELDS = ("name", "consistency", "keys", "version", "tier")
_TIERS = ("primary", "replica", "cache", "index")


class ConfigError(ValueError):
    """Bad configuration: the message names where (file:line, rule or variable) and the fix."""


@dataclass(frozen=True, slots=True)
class Consistency:
    kind: ConsistencyKind
    bound_ms: int = 0

    def __str__(self) -> str:
        return f"bounded:{self.bound_ms}" if self.kind == "bounded" else self.kind


LINEARIZABLE = Consistency("linearizable")


def parse_consistency(text: str) -> Consistency:
    """`linearizable`, `session`, `eventual` or `bounded:<ms>`; ValueError otherwise."""
    value = text.strip()
    if value in ("linearizable", "session", "eventual"):
        return Consistency(value)  # type: ignore[arg-type]
    if value.startswith("bounded:"):
        bound = value[len("bounded:") :]
        if bound.isdigit():
            return Consistency("bounded", int(bound))
    raise ValueError(
        f"unknown consistency model {text!r}: use 'linearizable', 'session', "
        "'eventual' or 'bounded:<ms>' (e.g. 'bounded:500')"
    )


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """Where a store finds a fact's version before it falls back to a digest."""

    column: str | None = None
    json_field: str | None = None
    hash_field: str | None = None
    payload_field: str | None = None


@dataclass(frozen=True, slots=True)
class KeyPattern:
    text: str
    regex: re.Pattern[str]
    placeholders: tuple[str, ...]
    tier: str | None = None  # e.g. the cache table of a fact whose other keys are primary


def compile_key_pattern(text: str, tier: str | None = None) -> KeyPattern:
    """`<store>:<path>` where `*` matches one segment (no `/`) and `{name}` captures one."""
    if ":" not in text or text.startswith(":"):
        raise ValueError(
            f"key pattern {text!r} has no store prefix: write it as '<store>:<path>', "
            "e.g. 'redis:*/credit_score:{customer_id}'"
        )
    names = _PLACEHOLDER.findall(text)
    if len(set(names)) != len(names):
        raise ValueError(f"key pattern {text!r} uses a placeholder twice")
    out: list[str] = []
    pos = 0
    for match in re.finditer(r"\{[A-Za-z_][A-Za-z0-9_]*\}|\*\*|\*", text):
        out.append(re.escape(text[pos : match.start()]))
        token = match.group(0)
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        else:
            out.append(f"(?P<{token[1:-1]}>[^/]+)")
        pos = match.end()
    out.append(re.escape(text[pos:]))
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise ValueError(f"key pattern {text!r} has a malformed placeholder; use {{name}}")
    return KeyPattern(text, re.compile("".join(out) + r"\Z"), tuple(names), tier)


@dataclass(frozen=True, slots=True)
class FactRule:
    name: str
    keys: tuple[KeyPattern, ...]
    consistency: Consistency | None = None
    version: VersionSpec = VersionSpec()
    tier: str | None = None
    source: str = "<code>"  # file:line, for messages

    def match(self, physical_key: str) -> ResolvedFact | None:
        """The logical fact for `physical_key`, or None if no pattern matches."""
        for pattern in self.keys:
            found = pattern.regex.match(physical_key)
            if found is not None:
                parts = [found.group(name) for name in self.keys[0].placeholders]
                return ResolvedFact("/".join([self.name, *parts]), self, pattern.tier or self.tier)
        return None


@dataclass(frozen=True, slots=True)
class ResolvedFact:
    key: str
    rule: FactRule | None
    tier: str | None = None  # the tier the rule gives this key, if any


@dataclass(frozen=True)
class Settings:
    consistency: Consistency = LINEARIZABLE
    on_anomaly: OnAnomaly = "record"
    clock_skew_ms: int = 0
    max_traces: int = 10_000
    max_observations: int = 200_000
    max_facts_per_trace: int = 1_000
    max_events_per_fact: int = 256
    trace_ttl_ms: int = 300_000
    digest_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    rules: tuple[FactRule, ...] = ()
    config_source: str | None = None

    def resolve(self, physical_key: str) -> ResolvedFact:
        """Map a store-level key onto its logical fact (first matching rule wins)."""
        for rule in self.rules:
            resolved = rule.match(physical_key)
            if resolved is not None:
                return resolved
        return ResolvedFact(physical_key, None)

    def rule_for_fact(self, fact: str) -> FactRule | None:
        for rule in self.rules:
            if fact == rule.name or fact.startswith(rule.name + "/"):
                return rule
        return None

    def consistency_for(self, fact: str) -> Consistency:
        rule = self.rule_for_fact(fact)
        if rule is not None and rule.consistency is not None:
            return rule.consistency
        return self.consistency

    def consistency_label(self, facts: Iterable[str]) -> str:
        """`agentstate.consistency` for a read of `facts`: their models, distinct, in order."""
        models = dict.fromkeys(str(self.consistency_for(fact)) for fact in facts)
        return ",".join(models) or str(self.consistency)

    def digest(self, data: bytes) -> str:
        """Keyed BLAKE2b: equal values give equal versions, and no value can be recovered."""
        return "h:" + hashlib.blake2b(data, key=self.digest_key, digest_size=16).hexdigest()


# ---------------------------------------------------------------- environment


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(
            f"{name}={raw!r}: expected a whole number >= {minimum} (default {default})"
        )
    return value


def _digest_key(env: Mapping[str, str]) -> bytes:
    raw = env.get(ENV_DIGEST_KEY)
    if raw is None or raw == "":
        return secrets.token_bytes(32)
    data = raw.encode("utf-8")
    if len(data) < 16:
        raise ConfigError(
            f"{ENV_DIGEST_KEY} is {len(data)} bytes long: use at least 16 bytes of secret "
            "(e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    # BLAKE2b keys are at most 64 bytes; longer secrets are hashed down to fit.
    return data if len(data) <= 64 else hashlib.blake2b(data).digest()


def settings_from_env(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read every `OTEL_AGENTSTATE_*` variable and the fact rules; ConfigError if bad."""
    env = os.environ if env is None else env
    consistency_text = env.get(ENV_CONSISTENCY, "").strip() or "linearizable"
    try:
        consistency = parse_consistency(consistency_text)
    except ValueError as exc:
        raise ConfigError(f"{ENV_CONSISTENCY}: {exc}") from None
    on_anomaly = env.get(ENV_ON_ANOMALY, "").strip().lower() or "record"
    if on_anomaly not in ("record", "raise"):
        raise ConfigError(
            f"{ENV_ON_ANOMALY}={env.get(ENV_ON_ANOMALY)!r}: use 'record' (report anomalies, "
            "the default) or 'raise' (a stale instrumented read raises StaleReadError)"
        )
    rules, source = load_rules(env, cwd)
    return Settings(
        consistency=consistency,
        on_anomaly=on_anomaly,  # type: ignore[arg-type]
        clock_skew_ms=_env_int(env, ENV_CLOCK_SKEW_MS, 0, 0),
        max_traces=_env_int(env, ENV_MAX_TRACES, 10_000, 1),
        max_observations=_env_int(env, ENV_MAX_OBSERVATIONS, 200_000, 1),
        max_facts_per_trace=_env_int(env, ENV_MAX_FACTS_PER_TRACE, 1_000, 1),
        max_events_per_fact=_env_int(env, ENV_MAX_EVENTS_PER_FACT, 256, 2),
        trace_ttl_ms=_env_int(env, ENV_TRACE_TTL_MS, 300_000, 1),
        digest_key=_digest_key(env),
        rules=rules,
        config_source=source,
    )


# ---------------------------------------------------------------- fact rules


def load_rules(
    env: Mapping[str, str], cwd: Path | None = None
) -> tuple[tuple[FactRule, ...], str | None]:
    """Fact rules from `OTEL_AGENTSTATE_CONFIG`, else `[tool.otel-agent-state]` in pyproject."""
    named = env.get(ENV_CONFIG, "").strip()
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(
                f"{ENV_CONFIG}={named!r}: no such file (cwd {Path.cwd()}); point it at a TOML "
                "file with [[facts]] tables, or unset it"
            )
        return parse_rules_file(path, table_prefix=()), str(path)
    pyproject = (cwd or Path.cwd()) / "pyproject.toml"
    if pyproject.is_file():
        text = _read(pyproject)
        if "otel-agent-state" not in text:
            return (), None
        return parse_rules_text(text, str(pyproject), ("tool", "otel-agent-state")), str(pyproject)
    return (), None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None


def parse_rules_file(path: Path, table_prefix: tuple[str, ...] = ()) -> tuple[FactRule, ...]:
    return parse_rules_text(_read(path), str(path), table_prefix)


def parse_rules_text(
    text: str, filename: str, table_prefix: tuple[str, ...] = ()
) -> tuple[FactRule, ...]:
    """Parse and validate `[[facts]]` tables; errors name file:line and the rule."""
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: not valid TOML: {exc}") from None
    section: Any = doc
    for part in table_prefix:
        section = section.get(part, {}) if isinstance(section, dict) else {}
    where = ".".join([*table_prefix, "facts"])
    if not isinstance(section, dict):
        raise ConfigError(f"{filename}: [{'.'.join(table_prefix)}] must be a table")
    unknown_top = sorted(set(section) - {"facts"})
    if unknown_top:
        line = _line_of(text, rf"^\s*{re.escape(unknown_top[0])}\s*=", 1)
        raise ConfigError(
            f"{filename}:{line}: unknown setting {unknown_top[0]!r}; only [[{where}]] "
            "tables belong here (process settings are OTEL_AGENTSTATE_* variables)"
        )
    raw_rules = section.get("facts", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{filename}: '{where}' must be an array of tables: [[{where}]]")
    header = re.compile(r"^\s*\[\[\s*" + re.escape(where) + r"\s*\]\]")
    headers = [i + 1 for i, line in enumerate(text.splitlines()) if header.match(line)]
    rules: list[FactRule] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(raw_rules):
        start = headers[index] if index < len(headers) else 1
        rule = _parse_rule(raw, index, start, text, filename)
        if rule.name in seen:
            raise ConfigError(
                f"{filename}:{start}: rule {rule.name!r} is defined twice "
                f"(first at {seen[rule.name]}); give each [[facts]] rule its own name"
            )
        seen[rule.name] = rule.source
        rules.append(rule)
    return tuple(rules)


def rules_from_dicts(raw: Any, origin: str = "configure(rules=...)") -> tuple[FactRule, ...]:
    """Fact rules given from code as dicts shaped like the TOML tables."""
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{origin}: expected a list of rule dicts, got {type(raw).__name__}")
    rules: list[FactRule] = []
    for index, item in enumerate(raw):
        rule = item if isinstance(item, FactRule) else _parse_rule(item, index, 0, "", origin)
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"{origin}: rule {rule.name!r} is defined twice")
        rules.append(rule)
    return tuple(rules)


def _line_of(text: str, pattern: str, start: int) -> int:
    """The line of `pattern` inside the table that begins at line `start`, else `start`."""
    regex = re.compile(pattern)
    lines = text.splitlines()
    for number in range(max(start, 1), len(lines) + 1):
        line = lines[number - 1]
        if number > start and line.lstrip().startswith("["):
            break
        if regex.search(line):
            return number
    return max(start, 1)


def _key_entry(entry: Any) -> KeyPattern:
    if isinstance(entry, str):
        return compile_key_pattern(entry)
    if isinstance(entry, dict) and isinstance(entry.get("pattern"), str):
        extra = sorted(set(entry) - {"pattern", "tier"})
        tier = entry.get("tier")
        if extra:
            raise ValueError(f"key entry has unknown field {extra[0]!r}; allowed: pattern, tier")
        if tier is not None and tier not in _TIERS:
            raise ValueError(f"key tier must be one of {', '.join(_TIERS)}, got {tier!r}")
        return compile_key_pattern(entry["pattern"], tier)
    raise ValueError(
        f'each key must be a pattern string or {{ pattern = "...", tier = "cache" }}, got {entry!r}'
    )


def _parse_rule(raw: Any, index: int, start: int, text: str, filename: str) -> FactRule:
    label = f"rule #{index + 1}"

    def fail(key: str | None, message: str) -> ConfigError:
        if not text:  # rules given from code: no file, no line
            return ConfigError(f"{filename}: {label}: {message}")
        line = _line_of(text, rf"^\s*{re.escape(key)}\s*=", start) if key else start
        return ConfigError(f"{filename}:{line}: {label}: {message}")

    if not isinstance(raw, dict):
        raise fail(None, "each [[facts]] entry must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _RULE_NAME.match(name):
        raise fail(
            "name" if "name" in raw else None,
            f"'name' must be a word such as \"credit_score\" (letters, digits, _ . -), "
            f"got {name!r}",
        )
    label = f"rule {name!r}"
    unknown = sorted(set(raw) - set(_RULE_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field {unknown[0]!r}; allowed: {', '.join(_RULE_FIELDS)}")
    consistency: Consistency | None = None
    if "consistency" in raw:
        if not isinstance(raw["consistency"], str):
            raise fail("consistency", "'consistency' must be a string")
        try:
            consistency = parse_consistency(raw["consistency"])
        except ValueError as exc:
            raise fail("consistency", str(exc)) from None
    keys = raw.get("keys")
    if not isinstance(keys, list) or not keys:
        raise fail(
            "keys" if "keys" in raw else None,
            "'keys' must be a non-empty list of patterns, e.g. "
            '["postgresql:*/credit_scores/{customer_id}", "redis:*/credit_score:{customer_id}"]',
        )
    patterns: list[KeyPattern] = []
    for key in keys:
        try:
            patterns.append(_key_entry(key))
        except ValueError as exc:
            raise fail("keys", str(exc)) from None
    first = set(patterns[0].placeholders)
    for pattern in patterns[1:]:
        if set(pattern.placeholders) != first:
            raise fail(
                "keys",
                f"patterns {patterns[0].text!r} and {pattern.text!r} capture different "
                "placeholders; every key of one fact must name the same {placeholders}",
            )
    version = VersionSpec()
    if "version" in raw:
        spec = raw["version"]
        if not isinstance(spec, dict):
            raise fail("version", "'version' must be a table, e.g. { column = \"version\" }")
        bad = sorted(set(spec) - set(_VERSION_FIELDS))
        if bad:
            raise fail(
                "version",
                f"unknown version source {bad[0]!r}; allowed: {', '.join(_VERSION_FIELDS)}",
            )
        for key_name, value in spec.items():
            if not isinstance(value, str) or not value:
                raise fail("version", f"version.{key_name} must be a non-empty string")
        version = VersionSpec(**spec)
    tier = raw.get("tier")
    if tier is not None and tier not in _TIERS:
        raise fail("tier", f"'tier' must be one of {', '.join(_TIERS)}, got {tier!r}")
    return FactRule(
        name=name,
        keys=tuple(patterns),
        consistency=consistency,
        version=version,
        tier=tier,
        source=f"{filename}:{start}",
    )


# ---------------------------------------------------------------- process-wide settings

_current: Settings | None = None
_failure: ConfigError | None = None  # a bad config is read once, not on every call


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use.

    Raises ConfigError when they are bad (the same error again on later calls)."""
    global _current, _failure
    if _current is None:
        if _failure is not None:
            raise _failure
        try:
            _current = settings_from_env()
        except ConfigError as exc:
            _failure = exc
            raise
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (None: read the environment again on next use)."""
    global _current, _failure
    _current = settings
    _failure = None

"""Settings from the environment, fact rules from TOML, and the errors for bad ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from otel_agent_state import ConfigError, configure
from otel_agent_state.core.config import (
    Consistency,
    Settings,
    compile_key_pattern,
    get_settings,
    parse_consistency,
    parse_rules_text,
    set_settings,
    settings_from_env,
)

GOOD = textwrap.dedent(
    """
    # comment
    [[facts]]
    name = "credit_score"
    consistency = "linearizable"
    keys = ["postgresql:*/credit_scores/{customer_id}", "redis:*/credit_score:{customer_id}"]
    version = { column = "version", json_field = "version" }

    [[facts]]
    name = "memory"
    consistency = "bounded:500"
    keys = [{ pattern = "qdrant:memories/{id}", tier = "index" }]
    """
)


@pytest.fixture(autouse=True)
def _fresh_settings() -> None:
    set_settings(None)
    yield
    set_settings(None)


def test_rules_map_physical_keys_onto_logical_facts() -> None:
    settings = Settings(rules=parse_rules_text(GOOD, "facts.toml"))
    assert settings.resolve("postgresql:app/credit_scores/42").key == "credit_score/42"
    assert settings.resolve("redis:0/credit_score:42").key == "credit_score/42"
    resolved = settings.resolve("qdrant:memories/7f3a")
    assert resolved.key == "memory/7f3a"
    assert resolved.tier == "index"
    assert resolved.rule is not None and resolved.rule.version.column is None
    unmatched = settings.resolve("redis:0/session:9")
    assert unmatched.key == "redis:0/session:9" and unmatched.rule is None
    assert settings.consistency_for("credit_score/42") == Consistency("linearizable")
    assert settings.consistency_for("memory/7f3a") == Consistency("bounded", 500)
    assert settings.consistency_for("other/1") == Consistency("linearizable")
    assert settings.rule_for_fact("credit_score/42") is not None
    assert settings.rule_for_fact("credit_scores/42") is None


def test_key_pattern_star_is_one_segment() -> None:
    pattern = compile_key_pattern("postgresql:*/credit_scores/{id}")
    assert pattern.regex.match("postgresql:app/credit_scores/42")
    assert not pattern.regex.match("postgresql:app/x/credit_scores/42")
    assert compile_key_pattern("redis:**").regex.match("redis:0/a/b/c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[facts]]\nname = "a"\nkeys = ["x:{id}"]\n\n[[facts]]\nname = "b"\n'
            'consistency = "strong"\nkeys = ["y:{id}"]\n',
            "facts.toml:7: rule 'b': unknown consistency model 'strong'",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = []\n',
            "facts.toml:3: rule 'a': 'keys' must be a non-empty list of patterns",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = ["nostore"]\n',
            "facts.toml:3: rule 'a': key pattern 'nostore' has no store prefix",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = ["x:{id}", "y:{other}"]\n',
            "facts.toml:3: rule 'a': patterns 'x:{id}' and 'y:{other}' capture different",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = ["x:{id}"]\nversoin = { column = "v" }\n',
            "facts.toml:4: rule 'a': unknown field 'versoin'",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = ["x:{id}"]\nversion = { colum = "v" }\n',
            "facts.toml:4: rule 'a': unknown version source 'colum'",
        ),
        (
            '[[facts]]\nkeys = ["x:{id}"]\n',
            "facts.toml:1: rule #1: 'name' must be a word",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = ["x:{id}"]\n[[facts]]\nname = "a"\nkeys = ["y:{id}"]\n',
            "facts.toml:4: rule 'a' is defined twice (first at facts.toml:1)",
        ),
        (
            '[[facts]]\nname = "a"\nkeys = [{ pattern = "x:{id}", tier = "l2" }]\n',
            "facts.toml:3: rule 'a': key tier must be one of",
        ),
        ('[[facts]\nname = "a"\n', "facts.toml: not valid TOML"),
        ('mode = "x"\n', "facts.toml:1: unknown setting 'mode'"),
    ],
)
def test_bad_rules_name_file_line_and_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules_text(text, "facts.toml")
    assert message in str(caught.value)


def test_rules_in_pyproject_tool_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[[tool.otel-agent-state.facts]]\nname = "doc"\n'
        'keys = ["sqlite:*/docs/{id}"]\nconsistency = "sessionn"\n'
    )
    with pytest.raises(ConfigError) as caught:
        settings_from_env({}, cwd=tmp_path)
    assert f"{tmp_path / 'pyproject.toml'}:7: rule 'doc': unknown consistency model" in str(
        caught.value
    )


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "facts.toml"
    path.write_text(GOOD)
    settings = settings_from_env({"OTEL_AGENTSTATE_CONFIG": str(path)}, cwd=tmp_path)
    assert [r.name for r in settings.rules] == ["credit_score", "memory"]
    assert settings.config_source == str(path)
    with pytest.raises(ConfigError, match="no such file"):
        settings_from_env({"OTEL_AGENTSTATE_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_AGENTSTATE_MAX_TRACES": "many"}, "OTEL_AGENTSTATE_MAX_TRACES='many'"),
        ({"OTEL_AGENTSTATE_MAX_TRACES": "0"}, "expected a whole number >= 1"),
        ({"OTEL_AGENTSTATE_CLOCK_SKEW_MS": "-5"}, "OTEL_AGENTSTATE_CLOCK_SKEW_MS='-5'"),
        ({"OTEL_AGENTSTATE_CONSISTENCY": "strict"}, "OTEL_AGENTSTATE_CONSISTENCY: unknown"),
        ({"OTEL_AGENTSTATE_ON_ANOMALY": "panic"}, "use 'record'"),
        ({"OTEL_AGENTSTATE_DIGEST_KEY": "short"}, "use at least 16 bytes"),
    ],
)
def test_bad_environment_is_a_clear_error(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env(env, cwd=tmp_path)
    assert message in str(caught.value)


def test_environment_values(tmp_path: Path) -> None:
    settings = settings_from_env(
        {
            "OTEL_AGENTSTATE_CONSISTENCY": "bounded:250",
            "OTEL_AGENTSTATE_ON_ANOMALY": "raise",
            "OTEL_AGENTSTATE_CLOCK_SKEW_MS": "40",
            "OTEL_AGENTSTATE_MAX_TRACES": "7",
            "OTEL_AGENTSTATE_MAX_FACTS_PER_TRACE": "9",
            "OTEL_AGENTSTATE_TRACE_TTL_MS": "1000",
            "OTEL_AGENTSTATE_DIGEST_KEY": "0123456789abcdef-secret",
        },
        cwd=tmp_path,
    )
    assert settings.consistency == Consistency("bounded", 250)
    assert settings.on_anomaly == "raise"
    assert (settings.clock_skew_ms, settings.max_traces, settings.max_facts_per_trace) == (40, 7, 9)
    assert settings.trace_ttl_ms == 1000


def test_digests_are_keyed() -> None:
    a = Settings(digest_key=b"k" * 32)
    b = Settings(digest_key=b"j" * 32)
    assert a.digest(b"750") == a.digest(b"750")
    assert a.digest(b"750") != a.digest(b"680")
    assert a.digest(b"750") != b.digest(b"750")  # no key, no dictionary attack on 300..850
    assert a.digest(b"750").startswith("h:") and len(a.digest(b"750")) == 2 + 32
    assert Settings().digest(b"x") != Settings().digest(b"x")  # random key per process


def test_parse_consistency() -> None:
    assert parse_consistency("session") == Consistency("session")
    assert str(parse_consistency("bounded:30")) == "bounded:30"
    with pytest.raises(ValueError, match="bounded:<ms>"):
        parse_consistency("bounded:soon")


def test_configure_from_code() -> None:
    settings = configure(
        consistency="session",
        rules=[{"name": "doc", "keys": ["sqlite:*/docs/{id}"], "version": {"column": "v"}}],
    )
    assert get_settings() is settings
    assert settings.resolve("sqlite:app/docs/3").key == "doc/3"
    assert configure(on_anomaly="raise").consistency == Consistency("session")  # kept
    with pytest.raises(ConfigError, match=r"configure\(rules=\.\.\.\): rule 'x': unknown field"):
        configure(rules=[{"name": "x", "keys": ["a:b"], "bogus": 1}])
    with pytest.raises(ConfigError, match="configure\\(max_traces=0\\)"):
        configure(max_traces=0)
    with pytest.raises(ConfigError, match="on_anomaly"):
        configure(on_anomaly="explode")


def test_consistency_label_lists_the_models_of_the_facts_read() -> None:
    settings = Settings(rules=parse_rules_text(GOOD, "facts.toml"))
    assert settings.consistency_label(["credit_score/1"]) == "linearizable"
    assert settings.consistency_label(["memory/a", "credit_score/1", "memory/b"]) == (
        "bounded:500,linearizable"
    )
    assert settings.consistency_label([]) == "linearizable"


def test_bad_environment_is_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "facts.toml"
    bad.write_text('[[facts]]\nname = "a"\nkeys = []\n')
    monkeypatch.setenv("OTEL_AGENTSTATE_CONFIG", str(bad))
    with pytest.raises(ConfigError) as first:
        get_settings()
    bad.write_text(GOOD)  # not re-read: the process keeps reporting the start-up error
    with pytest.raises(ConfigError) as again:
        get_settings()
    assert again.value is first.value
    set_settings(None)
    assert [r.name for r in get_settings().rules] == ["credit_score", "memory"]

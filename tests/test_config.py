"""Settings: TOML file, environment overrides, validation messages naming the key, redaction."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from gateway import config
from gateway.config import (
    ChargersSettings,
    Settings,
    load_settings,
    redacted,
    resolve_config_path,
)
from gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLIPTURN_GATEWAY_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("FLIPTURN_GATEWAY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


# --- defaults, file, environment -------------------------------------------------------------


def test_defaults_match_the_contract() -> None:
    settings = load_settings(None)
    assert (settings.chargers.host, settings.chargers.port) == ("0.0.0.0", 9000)
    assert settings.chargers.path_prefix == "/ocpp"
    assert settings.chargers.auth == "none"
    assert settings.chargers.allow_unknown is True
    assert (settings.chargers.tls_cert, settings.chargers.tls_key) == ("", "")
    assert settings.chargers.max_message_bytes == 65536
    assert settings.chargers.passwords == {}
    assert settings.upstream.url == ""
    assert settings.upstream.call_timeout_s == 10
    assert settings.upstream.pass_authorization is True
    assert settings.upstream.compression is True
    assert settings.flipturn.api_url == "https://api.getflipturn.com"
    assert settings.flipturn.api_key.get_secret_value() == ""
    assert settings.flipturn.sync_interval_s == 300
    assert settings.offline.unknown_tags == "reject"
    assert settings.offline.heartbeat_interval_s == 300
    assert settings.store.path == "gateway.db"
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8080)
    assert settings.api.token.get_secret_value() == ""
    assert settings.ports == ()
    assert settings.standalone
    site = settings.site
    assert (site.max_current_a, site.mode, site.min_current_a) == (0, "offline", 6)
    assert (site.charger_max_current_a, site.voltage_v) == (32, 230)
    assert (site.engage_after_s, site.release_after_s, site.chargers) == (10, 60, {})
    assert not site.enabled


def test_toml_file(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
            [chargers]
            port = 9100
            auth = "basic"
            allow_unknown = false
            [chargers.passwords]
            "CP-1" = "s3cret-password-1"
            [upstream]
            url = "wss://ocpp.example.com/ocpp/"
            call_timeout_s = 2.5
            [offline]
            unknown_tags = "accept"
            [[ports]]
            id = 101
            charger = "CP-1"
            connector = 1
            [[ports]]
            id = 102
            charger = "CP-1"
            connector = 2
            """,
        )
    )
    assert settings.chargers.port == 9100
    assert settings.chargers.auth == "basic"
    assert settings.chargers.allow_unknown is False
    assert settings.chargers.password_for("CP-1") == "s3cret-password-1"
    assert settings.upstream.url == "wss://ocpp.example.com/ocpp"  # trailing slash dropped
    assert settings.upstream.call_timeout_s == 2.5
    assert not settings.standalone
    assert settings.offline.unknown_tags == "accept"
    assert [(p.id, p.charger, p.connector) for p in settings.ports] == [
        (101, "CP-1", 1),
        (102, "CP-1", 2),
    ]
    assert settings.api.port == 8080  # untouched sections keep their defaults


def test_env_overrides_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_UPSTREAM__URL", "ws://cloud.test:9999/ocpp")
    settings = load_settings(None)
    assert settings.upstream.url == "ws://cloud.test:9999/ocpp"
    assert settings.upstream.call_timeout_s == 10


def test_env_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_API__PORT", "8181")
    monkeypatch.setenv("FLIPTURN_GATEWAY_OFFLINE__UNKNOWN_TAGS", "accept")
    monkeypatch.setenv("FLIPTURN_GATEWAY_CHARGERS__PASSWORDS__CP7", "env-password-77")
    settings = load_settings(None)
    assert settings.api.port == 8181
    assert settings.offline.unknown_tags == "accept"
    assert settings.chargers.password_for("CP7") == "env-password-77"


def test_env_ports_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [{"id": 7, "charger": "CP-9", "connector": 2}]
    monkeypatch.setenv("FLIPTURN_GATEWAY_PORTS", json.dumps(ports))
    (mapping,) = load_settings(None).ports
    assert (mapping.id, mapping.charger, mapping.connector) == (7, "CP-9", 2)


def test_env_beats_file_and_the_rest_of_the_section_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        """
        [chargers]
        host = "10.0.0.5"
        port = 9100
        [chargers.passwords]
        "CP-1" = "file-password-1"
        [upstream]
        url = "wss://file.example.com/ocpp"
        """,
    )
    monkeypatch.setenv("FLIPTURN_GATEWAY_UPSTREAM__URL", "wss://env.example.com/ocpp")
    monkeypatch.setenv("FLIPTURN_GATEWAY_CHARGERS__PORT", "9200")
    monkeypatch.setenv("FLIPTURN_GATEWAY_CHARGERS__PASSWORDS__CP2", "env-password-2")
    settings = load_settings(path)
    assert settings.upstream.url == "wss://env.example.com/ocpp"
    assert settings.chargers.port == 9200
    assert settings.chargers.host == "10.0.0.5"
    assert settings.chargers.password_for("CP-1") == "file-password-1"
    assert settings.chargers.password_for("CP2") == "env-password-2"


def test_settings_are_frozen() -> None:
    settings = load_settings(None)
    with pytest.raises(ValidationError):
        settings.chargers.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("given", "expected"), [("/ocpp", "/ocpp"), ("ocpp/", "/ocpp"), ("/", "")])
def test_path_prefix_is_normalised(given: str, expected: str) -> None:
    assert ChargersSettings(path_prefix=given).path_prefix == expected


# --- errors name the key -----------------------------------------------------------------------


def test_unknown_key_names_section_and_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, "[chargers]\nprot = 9000\n")
    assert "chargers.prot: unknown key" in message


def test_unknown_section_and_unknown_key_in_a_port(tmp_path: Path) -> None:
    assert "upstreams: unknown key" in error_for(tmp_path, '[upstreams]\nurl = ""\n')
    message = error_for(tmp_path, '[[ports]]\nid = 1\ncharger = "A"\nconnector = 1\nevse = 1\n')
    assert "ports.0.evse: unknown key" in message


def test_unknown_nested_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_API__TOKNE", "x")
    with pytest.raises(ConfigError, match=r"api\.tokne: unknown key"):
        load_settings(None)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[chargers]\nport = "nine thousand"\n', "chargers.port"),
        ("[chargers]\nport = true\n", "chargers.port"),
        ('[chargers]\nallow_unknown = "maybe"\n', "chargers.allow_unknown"),
        ('[chargers]\nauth = "digest"\n', "chargers.auth"),
        ("[chargers]\npasswords = 1\n", "chargers.passwords"),
        ("[chargers.passwords]\nCP1 = 1234\n", "chargers.passwords.CP1"),
        ("[upstream]\ncall_timeout_s = [1]\n", "upstream.call_timeout_s"),
        ('[offline]\nunknown_tags = "allow"\n', "offline.unknown_tags"),
        ("[offline]\nheartbeat_interval_s = 1.5\n", "offline.heartbeat_interval_s"),
        ("chargers = 1\n", "chargers"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert f"{key}: " in error_for(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[chargers]\nport = 65536\n", "chargers.port"),
        ("[chargers]\nport = -1\n", "chargers.port"),
        ("[api]\nport = 70000\n", "api.port"),
        ("[chargers]\nmax_message_bytes = 10\n", "chargers.max_message_bytes"),
        ("[upstream]\ncall_timeout_s = 0\n", "upstream.call_timeout_s"),
        ("[flipturn]\nsync_interval_s = 1\n", "flipturn.sync_interval_s"),
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert f"{key}: " in error_for(tmp_path, text)


def test_port_range_limits_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[chargers]\nport = 0\n[api]\nport = 65535\n"))
    assert (settings.chargers.port, settings.api.port) == (0, 65535)


def test_env_value_out_of_range_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_API__PORT", "99999")
    with pytest.raises(ConfigError, match=r"api\.port: must be between 0 and 65535"):
        load_settings(None)


def test_tls_cert_without_tls_key_names_tls_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[chargers]\ntls_cert = "/etc/ssl/gw.pem"\n')
    assert message.splitlines()[1].strip().startswith("chargers: tls_key must be set")


def test_tls_key_without_tls_cert_names_tls_cert(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[chargers]\ntls_key = "/etc/ssl/gw.key"\n')
    assert "chargers: tls_cert must be set" in message


def test_tls_pair_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, '[chargers]\ntls_cert = "gw.pem"\ntls_key = "gw.key"\n')
    assert load_settings(path).chargers.tls_key == "gw.key"


@pytest.mark.parametrize("url", ["http://ocpp.example.com", "ocpp.example.com", "https://x"])
def test_bad_upstream_url_scheme(tmp_path: Path, url: str) -> None:
    message = error_for(tmp_path, f'[upstream]\nurl = "{url}"\n')
    assert "upstream.url: must start with ws:// or wss://" in message


def test_bad_flipturn_api_url_scheme(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[flipturn]\napi_url = "ftp://api.example.com"\n')
    assert "flipturn.api_url: must start with http:// or https://" in message


def test_duplicate_port_id(tmp_path: Path) -> None:
    message = error_for(
        tmp_path,
        """
        [[ports]]
        id = 101
        charger = "CP-1"
        connector = 1
        [[ports]]
        id = 101
        charger = "CP-2"
        connector = 1
        """,
    )
    assert "ports: portId 101 is listed twice" in message


def test_port_mapping_constraints(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[[ports]]\nid = 1\ncharger = ""\nconnector = -1\n')
    assert "ports.0.charger: " in message
    assert "ports.0.connector: " in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(write(tmp_path, "[chargers\nport = 9000\n"))


def test_invalid_json_in_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_PORTS", '[{"id": 1,')
    with pytest.raises(ConfigError, match='field "ports"'):
        load_settings(None)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[chargers]\nport = 70000\n[api]\nhots = "x"\n')
    assert "chargers.port" in message
    assert "api.hots: unknown key" in message


# --- secrets -----------------------------------------------------------------------------------


def test_redacted_hides_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        """
        [chargers.passwords]
        "CP-1" = "pw-ALPHA-0123456789"
        [flipturn]
        api_key = "key-BRAVO-0123456789"
        """,
    )
    monkeypatch.setenv("FLIPTURN_GATEWAY_API__TOKEN", "token-CHARLIE-0123")
    settings = load_settings(path)
    shown = redacted(settings)
    assert shown["chargers"]["passwords"] == {"CP-1": "***"}
    assert shown["flipturn"]["api_key"] == "***"
    assert shown["api"]["token"] == "***"
    text = json.dumps(shown) + repr(settings) + str(settings)
    for secret in ("pw-ALPHA-0123456789", "key-BRAVO-0123456789", "token-CHARLIE-0123"):
        assert secret not in text


def test_redacted_shows_unset_secrets_as_empty_and_keeps_the_rest() -> None:
    shown = redacted(load_settings(None))
    assert shown["flipturn"]["api_key"] == ""
    assert shown["api"]["token"] == ""
    assert shown["chargers"]["port"] == 9000
    assert shown["ports"] == []
    json.dumps(shown)  # plain data, printable by check-config


def test_secret_never_appears_in_a_config_error(tmp_path: Path) -> None:
    message = error_for(
        tmp_path, '[flipturn]\napi_key = "key-DELTA-0123456789"\nsync_interval_s = 0\n'
    )
    assert "flipturn.sync_interval_s" in message
    assert "key-DELTA" not in message


# --- charger passwords -------------------------------------------------------------------------


def test_password_for_exact_match_wins() -> None:
    chargers = ChargersSettings.model_validate(
        {"passwords": {"CP-1": "upper-password", "cp-1": "lower-password"}}
    )
    assert chargers.password_for("CP-1") == "upper-password"
    assert chargers.password_for("cp-1") == "lower-password"
    assert chargers.password_for("CP-2") is None


def test_password_for_matches_ids_set_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic-settings reads the environment case-insensitively: the key arrives lower-cased.
    monkeypatch.setenv("FLIPTURN_GATEWAY_CHARGERS__PASSWORDS__DEPOT_CP1", "env-password-1")
    chargers = load_settings(None).chargers
    assert list(chargers.passwords) == ["depot_cp1"]
    assert chargers.password_for("DEPOT_CP1") == "env-password-1"
    assert chargers.password_for("Depot_Cp1") == "env-password-1"


def test_password_json_in_env_keeps_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_CHARGERS__PASSWORDS", '{"CP-1": "json-password-1"}')
    chargers = load_settings(None).chargers
    assert list(chargers.passwords) == ["CP-1"]
    assert chargers.password_for("CP-1") == "json-password-1"
    assert chargers.password_for("cp-1") is None  # a mixed-case key only matches exactly


# --- config path -------------------------------------------------------------------------------


def test_resolve_config_path_prefers_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = write(tmp_path, "")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    monkeypatch.setenv("FLIPTURN_GATEWAY_CONFIG", "/from/env.toml")
    assert resolve_config_path("/from/cli.toml") == Path("/from/cli.toml")


def test_resolve_config_path_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "SYSTEM_CONFIG", write(tmp_path, ""))
    monkeypatch.setenv("FLIPTURN_GATEWAY_CONFIG", "/from/env.toml")
    assert resolve_config_path(None) == Path("/from/env.toml")


def test_resolve_config_path_then_the_system_file_if_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    assert resolve_config_path(None) is None
    system.parent.mkdir()
    system.write_text("")
    assert resolve_config_path(None) == system
    assert resolve_config_path("") == system  # an empty --config does not count


def test_config_env_var_does_not_count_as_an_unknown_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[chargers]\nport = 9001\n")
    monkeypatch.setenv("FLIPTURN_GATEWAY_CONFIG", str(path))
    settings = load_settings(resolve_config_path(None))
    assert settings.chargers.port == 9001


# --- config.example.toml stays in sync ---------------------------------------------------------


def section_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models[name] = annotation
    return models


# The example shows the defaults, except where a device needs another value.
DEVICE_VALUES = {("store", "path"): "/var/lib/flipturn-gateway/gateway.db"}


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    defaults = load_settings(None)
    device = defaults.model_copy(
        update={"store": defaults.store.model_copy(update={"path": DEVICE_VALUES["store", "path"]})}
    )
    assert settings == device


def test_example_config_documents_every_key_with_its_default() -> None:
    document = tomllib.loads(EXAMPLE.read_text())
    models = section_models()
    assert set(models) <= set(document), "a settings section is missing from the example"
    for section, model in models.items():
        table = document[section]
        for key, field in model.model_fields.items():
            assert key in table, f"{section}.{key} is missing from config.example.toml"
            default = field.get_default(call_default_factory=True)
            if hasattr(default, "get_secret_value"):
                default = default.get_secret_value()
            default = DEVICE_VALUES.get((section, key), default)
            assert table[key] == default, f"{section}.{key}: example shows a non-default value"
        assert set(table) == set(model.model_fields), f"[{section}] has keys the model lacks"


def test_example_config_documents_every_port_field() -> None:
    text = EXAMPLE.read_text()
    assert "# [[ports]]" in text
    for key in config.PortMapping.model_fields:
        assert f"# {key} = " in text, f"ports.{key} is missing from config.example.toml"


def test_example_entries_load_when_uncommented(tmp_path: Path) -> None:
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.removeprefix("# ")
        if stripped == "[[ports]]" or stripped.startswith(
            ('"CP-1" = ', "id = ", "charger = ", "connector = ")
        ):
            line = stripped
        lines.append(line)
    settings = load_settings(write(tmp_path, "\n".join(lines)))
    assert settings.chargers.password_for("CP-1") == "change-me-0123456789"
    assert settings.site.chargers == {"CP-1": 16}
    (mapping,) = settings.ports
    assert (mapping.id, mapping.charger, mapping.connector) == (101, "CP-1", 1)


# --- [site] ------------------------------------------------------------------------------------


def test_site_section(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
            [site]
            max_current_a = 250
            mode = "always"
            min_current_a = 8
            charger_max_current_a = 16
            voltage_v = 120
            engage_after_s = 5
            release_after_s = 30.5
            [site.chargers]
            "CP-1" = 32
            CP2 = 11
            """,
        )
    )
    site = settings.site
    assert site.enabled
    assert (site.max_current_a, site.mode, site.min_current_a, site.voltage_v) == (
        250,
        "always",
        8,
        120,
    )
    assert (site.engage_after_s, site.release_after_s) == (5, 30.5)
    assert site.charger_max_a("CP-1") == 32
    assert site.charger_max_a("CP2") == 11
    assert site.charger_max_a("CP-3") == 16  # not named: charger_max_current_a
    assert site.charger_max_a("cp-1") == 16  # ids are case-sensitive


def test_site_charger_maximum_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIPTURN_GATEWAY_SITE__MAX_CURRENT_A", "400")
    monkeypatch.setenv("FLIPTURN_GATEWAY_SITE__CHARGERS__CP7", "22")
    site = load_settings(None).site
    assert site.max_current_a == 400
    assert site.charger_max_a("CP7") == 22  # the variable arrives lower-cased


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[site]\nmax_current_a = -1\n", "site.max_current_a: "),
        ("[site]\nmax_current_a = 63.5\n", "site.max_current_a: "),
        ("[site]\nmax_current_a = true\n", "site.max_current_a: "),
        ('[site]\nmode = "sometimes"\n', "site.mode: "),
        ("[site]\nmin_current_a = 0\n", "site.min_current_a: "),
        ("[site]\nmin_current_a = -6\n", "site.min_current_a: "),
        ("[site]\ncharger_max_current_a = 0\n", "site.charger_max_current_a: "),
        ("[site]\nvoltage_v = 0\n", "site.voltage_v: "),
        ("[site]\nengage_after_s = -1\n", "site.engage_after_s: "),
        ("[site]\nrelease_after_s = -0.5\n", "site.release_after_s: "),
        ("[site]\nmax_current = 100\n", "site.max_current: unknown key"),
        ('[site.chargers]\n"CP-1" = -16\n', "site.chargers: CP-1: must be between 1 and 1000"),
        ('[site.chargers]\n"CP-1" = "sixteen"\n', "site.chargers.CP-1: "),
        ('[site.chargers]\n"CP-1" = true\n', "site.chargers: CP-1: must be a number"),
        ("[site.chargers]\n" + "C" * 49 + " = 16\n", "a charge point id has 1-48 characters"),
        ("[site]\nmin_current_a = 40\n", "site: min_current_a (40) is above charger_max_current_a"),
        ("[site]\nmax_current_a = 5\n", "site: max_current_a (5) is below min_current_a (6)"),
        ('[site.chargers]\n"CP-1" = 4\n', "site: chargers.CP-1 is below min_current_a (6)"),
    ],
)
def test_site_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_for(tmp_path, text)


def test_site_limits_at_their_bounds_are_accepted(tmp_path: Path) -> None:
    text = "[site]\nmax_current_a = 6\nmin_current_a = 6\ncharger_max_current_a = 6\n"
    text += "engage_after_s = 0\nrelease_after_s = 0\n[site.chargers]\nCP1 = 6\n"
    site = load_settings(write(tmp_path, text)).site
    assert (site.max_current_a, site.charger_max_a("CP1"), site.engage_after_s) == (6, 6, 0)


def test_redacted_shows_the_site_section() -> None:
    shown = redacted(Settings(site={"max_current_a": 100, "chargers": {"CP-1": 16}}))
    assert shown["site"]["max_current_a"] == 100
    assert shown["site"]["chargers"] == {"CP-1": 16}
    assert shown["site"]["mode"] == "offline"

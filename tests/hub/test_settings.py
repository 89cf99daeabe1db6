"""Settings: defaults < TOML file < GRIDWATCH_<SECTION>__<KEY>, strict for operators."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from hub.settings import (
    ENV_PREFIX,
    InfluxSettings,
    MqttSettings,
    Settings,
    SettingsError,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GRIDWATCH_ variable from the outside world may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    yield


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gridwatch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_without_a_file() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.mqtt == MqttSettings()
    assert settings.influx == InfluxSettings()
    assert settings.mqtt.url == "mqtt://127.0.0.1:18830"
    assert settings.mqtt.host == "127.0.0.1"
    assert settings.mqtt.port == 18830
    assert not settings.mqtt.tls
    assert settings.influx.api == "v1"
    assert settings.hub.max_payload_bytes == 16 * 1024
    assert settings.mqtt.password is None
    assert settings.hub.credential_hash_key is None


def test_file_values_are_used(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[mqtt]
url = "mqtts://broker.example:8883"
client_id = "hub-7"
keepalive_s = 60

[influx]
database = "site7"
batch_size = 100

[spool]
directory = "/var/lib/gridwatch/spool"

[hub]
log_level = "DEBUG"
max_age_s = 86400.0
""",
    )
    settings = load_settings(path)
    assert settings.mqtt.url == "mqtts://broker.example:8883"
    assert settings.mqtt.tls
    assert settings.mqtt.port == 8883
    assert settings.mqtt.client_id == "hub-7"
    assert settings.mqtt.keepalive_s == 60
    assert settings.influx.database == "site7"
    assert settings.influx.batch_size == 100
    assert settings.spool.directory == Path("/var/lib/gridwatch/spool")
    assert settings.hub.log_level == "DEBUG"
    assert settings.hub.max_age_s == 86400.0
    # Untouched keys keep their defaults.
    assert settings.influx.url == InfluxSettings().url


def test_env_beats_the_file_and_other_file_keys_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path,
        """
[mqtt]
url = "mqtt://from-file:1883"
client_id = "file-hub"
""",
    )
    monkeypatch.setenv("GRIDWATCH_MQTT__URL", "mqtt://from-env:2883")
    settings = load_settings(path)
    assert settings.mqtt.url == "mqtt://from-env:2883"
    assert settings.mqtt.port == 2883
    assert settings.mqtt.client_id == "file-hub"


def test_env_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_INFLUX__BATCH_SIZE", "42")
    monkeypatch.setenv("GRIDWATCH_HUB__LOG_LEVEL", "WARNING")
    settings = load_settings()
    assert settings.influx.batch_size == 42
    assert settings.hub.log_level == "WARNING"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_broken_toml_is_a_settings_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[mqtt\nurl = ")
    with pytest.raises(SettingsError):
        load_settings(path)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[mqtt]\nurl = "mqtt://h:1"\nclient_idd = "typo"\n')
    with pytest.raises(SettingsError, match="client_idd"):
        load_settings(path)


def test_unknown_section_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[mqttt]\nurl = 'mqtt://h:1'\n")
    with pytest.raises(SettingsError, match="mqttt"):
        load_settings(path)


def test_wrong_type_in_file_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[influx]\nbatch_size = 'lots'\n")
    with pytest.raises(SettingsError, match=r"influx\.batch_size"):
        load_settings(path)


@pytest.mark.parametrize(
    "name",
    [
        "GRIDWATCH_MQTTT__URL",  # bad section
        "GRIDWATCH_MQTT__URLL",  # bad key
        "GRIDWATCH_MQTT_URL",  # missing `__`
        "GRIDWATCH_MQTT",  # no key at all
        "GRIDWATCH_",  # nothing
    ],
)
def test_unknown_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "mqtt://h:1883")
    with pytest.raises(SettingsError, match=name):
        load_settings()


@pytest.mark.parametrize("value", ["changeme", "changethis", "", "  ", "CHANGEME", "password"])
@pytest.mark.parametrize(
    "variable",
    ["GRIDWATCH_MQTT__PASSWORD", "GRIDWATCH_INFLUX__TOKEN", "GRIDWATCH_HUB__CREDENTIAL_HASH_KEY"],
)
def test_placeholder_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match="placeholder or empty"):
        load_settings()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("mqtt", "password"),
        ("influx", "token"),
        ("influx", "password"),
        ("hub", "credential_hash_key"),
    ],
)
def test_placeholder_secrets_in_the_file_are_refused(
    tmp_path: Path, section: str, key: str
) -> None:
    path = write_toml(tmp_path, f'[{section}]\n{key} = "changethis"\n')
    with pytest.raises(SettingsError, match="placeholder"):
        load_settings(path)


def test_short_credential_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_HUB__CREDENTIAL_HASH_KEY", "only-15-chars!!")
    with pytest.raises(SettingsError, match="at least 16"):
        load_settings()


def test_long_enough_credential_key_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_HUB__CREDENTIAL_HASH_KEY", "sixteen-chars-ok")
    key = load_settings().hub.credential_hash_key
    assert isinstance(key, SecretStr)
    assert key.get_secret_value() == "sixteen-chars-ok"


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({}, ["org", "bucket", "token"]),
        ({"org": "o"}, ["bucket", "token"]),
        ({"org": "o", "bucket": "b"}, ["token"]),
        ({"token": "a-real-token-value"}, ["org", "bucket"]),
    ],
)
def test_api_v2_needs_org_bucket_and_token(
    tmp_path: Path, present: dict[str, str], missing: list[str]
) -> None:
    body = "".join(f'{k} = "{v}"\n' for k, v in present.items())
    path = write_toml(tmp_path, f'[influx]\napi = "v2"\n{body}')
    with pytest.raises(SettingsError, match=", ".join(missing)):
        load_settings(path)


def test_api_v2_complete_is_accepted(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, '[influx]\napi = "v2"\norg = "o"\nbucket = "b"\ntoken = "a-real-token-value"\n'
    )
    influx = load_settings(path).influx
    assert influx.api == "v2"
    assert isinstance(influx.token, SecretStr)
    assert influx.token.get_secret_value() == "a-real-token-value"


@pytest.mark.parametrize(
    "url", ["http://broker:1883", "tcp://broker:1883", "broker:1883", "mqtt://"]
)
def test_bad_mqtt_url_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__URL", url)
    with pytest.raises(SettingsError, match=r"mqtt\.url"):
        load_settings()


def test_topic_prefix_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().mqtt.topic_prefix == "gw/v1"
    monkeypatch.setenv("GRIDWATCH_MQTT__TOPIC_PREFIX", "/acme/grid/v9/")
    assert load_settings().mqtt.topic_prefix == "acme/grid/v9"


@pytest.mark.parametrize("prefix", ["", "gw//v1", "gw/+", "gw/#/x", "gw/v 1", "gw/events"])
def test_bad_topic_prefix_is_refused(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__TOPIC_PREFIX", prefix)
    with pytest.raises(SettingsError, match=r"mqtt\.topic_prefix"):
        load_settings()


@pytest.mark.parametrize("client_id", ["hub/1", "hub+", "#"])
def test_client_id_that_cannot_name_the_presence_topic_is_refused(
    monkeypatch: pytest.MonkeyPatch, client_id: str
) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__CLIENT_ID", client_id)
    with pytest.raises(SettingsError, match=r"mqtt\.client_id"):
        load_settings()


def test_bad_influx_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_INFLUX__URL", "ftp://influx:8086")
    with pytest.raises(SettingsError, match=r"influx\.url"):
        load_settings()


def test_secrets_are_secretstr_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__PASSWORD", "hunter2-but-longer")
    monkeypatch.setenv("GRIDWATCH_INFLUX__PASSWORD", "influx-pass-123")
    settings = load_settings()
    assert isinstance(settings.mqtt.password, SecretStr)
    assert isinstance(settings.influx.password, SecretStr)
    assert settings.mqtt.password.get_secret_value() == "hunter2-but-longer"
    assert "hunter2-but-longer" not in repr(settings)
    assert "hunter2-but-longer" not in str(settings.model_dump())
    assert "influx-pass-123" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.mqtt.url = "mqtt://elsewhere:1"  # type: ignore[misc]

"""The `gridwatch` command line: config show/example and status (no services needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from hub.cli import main
from hub.settings import ENV_PREFIX, SECTIONS, Settings, load_settings
from ingest.status import write_status

MASK = "**********"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def section_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for name, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        models[name] = model
    return models


def test_config_show_prints_every_section_and_key(runner: CliRunner) -> None:
    result = runner.invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    for section, model in section_models().items():
        assert f"[{section}]" in result.output
        for key in model.model_fields:
            assert f"{key} = " in result.output, f"{section}.{key}"


def test_config_show_masks_secrets(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__PASSWORD", "s3cr3t-mqtt-password")
    monkeypatch.setenv("GRIDWATCH_HUB__CREDENTIAL_HASH_KEY", "s3cr3t-credential-key")
    result = runner.invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t-mqtt-password" not in result.output
    assert "s3cr3t-credential-key" not in result.output
    assert f'password = "{MASK}"' in result.output
    assert f'credential_hash_key = "{MASK}"' in result.output


def test_config_show_reads_the_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[influx]\ndatabase = "from-file"\n')
    result = runner.invoke(main, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert 'database = "from-file"' in result.output


def test_config_show_reports_bad_settings(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[mqtt]\nurll = "mqtt://h:1"\n')
    result = runner.invoke(main, ["config", "show", "--config", str(path)])
    assert result.exit_code != 0
    assert "urll" in result.output
    assert "Traceback" not in result.output


def example_text(runner: CliRunner) -> str:
    result = runner.invoke(main, ["config", "example"])
    assert result.exit_code == 0, result.output
    return result.output


def test_config_example_is_the_packaged_file(runner: CliRunner) -> None:
    packaged = Path(__file__).parents[2] / "hub" / "example.toml"
    assert example_text(runner) == packaged.read_text()


def test_config_example_loads_as_valid_settings(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(example_text(runner))
    settings = load_settings(path)
    # Every value shown is the default, so the example documents the defaults.
    assert settings.model_dump() == load_settings().model_dump()


def test_config_example_mentions_every_key(runner: CliRunner) -> None:
    text = example_text(runner)
    parsed = tomllib.loads(text)
    assert set(parsed) == set(SECTIONS)
    lines = [line.strip() for line in text.splitlines()]
    for section, model in section_models().items():
        start = lines.index(f"[{section}]")
        following = [i for i, line in enumerate(lines) if line.startswith("[") and i > start]
        body = lines[start + 1 : following[0] if following else len(lines)]
        for key in model.model_fields:
            assert any(line.startswith((f"{key} = ", f"# {key} = ")) for line in body), (
                f"[{section}] {key} is not in the example"
            )


def test_config_example_keeps_secrets_commented_out(runner: CliRunner) -> None:
    parsed = tomllib.loads(example_text(runner))
    assert "password" not in parsed["mqtt"]
    assert "token" not in parsed["influx"]
    assert "credential_hash_key" not in parsed["hub"]


def test_config_example_mentions_the_env_override(runner: CliRunner) -> None:
    header = example_text(runner).split("[mqtt]")[0]
    assert "GRIDWATCH_<SECTION>__<KEY>" in header


def test_status_without_a_status_file(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path / "nothing-here"))
    result = runner.invoke(main, ["status"])
    assert result.exit_code != 0
    assert "no hub has run" in result.output
    assert str(tmp_path / "nothing-here") in result.output


def dead_pid() -> int:
    """A pid that surely belongs to no process: one that has just exited and been reaped."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def snapshot(pid: int) -> dict[str, object]:
    return {
        "running": True,
        "pid": pid,
        "client_id": "gridwatch-hub",
        "subscription": "gw/v1/+/+/+/+",
        "influx": "http://127.0.0.1:18086",
        "connected": True,
        "reconnects": 0,
        "received": 10,
        "acked": 10,
        "stored": 9,
        "rejected": 1,
        "dead_lettered": 1,
        "write_failures": 0,
        "rejected_by_reason": {"bad_json": 1},
        "spool_lines": 0,
        "spool_bytes": 0,
        "lag_s": 0.25,
        "latency_p50_ms": 3.0,
        "latency_p99_ms": 9.5,
    }


def test_status_with_a_dead_pid_says_not_running(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_status(tmp_path, snapshot(dead_pid()))
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path))
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    assert "NOT RUNNING" in result.output
    assert "rejected bad_json" in result.output
    assert "p50 3.0 ms" in result.output


def test_status_with_a_live_pid_says_running(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_status(tmp_path, snapshot(os.getpid()))
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path))
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    assert "running" in result.output
    assert "NOT RUNNING" not in result.output
    assert "WAITING" not in result.output
    # A hub waiting out `mqtt.resume_wait_s` says so.
    write_status(tmp_path, {**snapshot(os.getpid()), "connected": False, "connect_in_s": 4.6})
    result = runner.invoke(main, ["status"])
    assert "WAITING       connects in 5 s" in result.output and "resume_wait_s" in result.output


def test_status_names_what_late_readings_came_behind(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path))
    counts = {"rules_evaluated": 9_500, "rules_detections": 3, "rules_late_readings": 9_117}
    shown = []
    for behind in (
        {"sm-b1-corridor-3": 9_100, "(hub clock ticks)": 17},
        {"a1": 5_000, "a2": 4_117},  # spread: no one device to blame
    ):
        write_status(tmp_path, {**snapshot(os.getpid()), **counts, "rules_late_behind": behind})
        shown.append(runner.invoke(main, ["status"]).output)
    assert "9117 readings reached the rules after timers" in shown[0]
    assert "behind: sm-b1-corridor-3 9100, (hub clock ticks) 17" in shown[0]
    assert "nearly all behind sm-b1-corridor-3: is its clock ahead?" in shown[0]
    assert "behind: a1 5000, a2 4117" in shown[1]
    assert "is its clock ahead" not in shown[1]


def test_status_names_the_devices_dated_ahead_of_the_hub_clock(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path))
    write_status(tmp_path, snapshot(os.getpid()))
    assert "ahead of the hub clock" not in runner.invoke(main, ["status"]).output
    ahead = {"readings_ahead": 9_156, "readings_ahead_max_s": 240.3}
    by = {"readings_ahead_by": {"sm-b1-corridor-3": 9_150, "ac-gate-1": 6}}
    write_status(tmp_path, {**snapshot(os.getpid()), **ahead, **by})
    shown = runner.invoke(main, ["status"]).output
    assert "9156 readings arrived dated up to 240.3 s ahead of the hub clock" in shown
    assert "by device: sm-b1-corridor-3 9150, ac-gate-1 6" in shown


def test_status_json(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_status(tmp_path, snapshot(dead_pid()))
    monkeypatch.setenv("GRIDWATCH_HUB__DATA_DIR", str(tmp_path))
    result = runner.invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert '"alive": false' in result.output
    assert '"received": 10' in result.output


def test_site_generate_is_deterministic_and_valid(runner: CliRunner, tmp_path: Path) -> None:
    args = ["site", "generate", "--cells", "3", "--devices", "30", "--seed", "5"]
    first = runner.invoke(main, args)
    again = runner.invoke(main, args)
    other = runner.invoke(main, [*args[:-1], "6"])
    assert first.exit_code == 0, first.output
    assert first.output == again.output != other.output
    out = tmp_path / "site.yaml"
    written = runner.invoke(main, [*args, "--out", str(out)])
    assert written.exit_code == 0
    assert out.read_text(encoding="utf-8") == first.output
    checked = runner.invoke(main, ["site", "validate", str(out)])
    assert checked.exit_code == 0 and "3 cells" in checked.output


def test_site_validate_names_the_line_of_an_error(runner: CliRunner, tmp_path: Path) -> None:
    good = runner.invoke(main, ["site", "generate", "--cells", "1", "--devices", "12"]).output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace("timezone: Asia/Shanghai", "timezone: Asia/Shanghai\nbogus: 1"))
    result = runner.invoke(main, ["site", "validate", str(bad)])
    assert result.exit_code != 0
    assert "bogus" in result.output and "line 4" in result.output


def test_cli_detector_names_are_the_detectors_of_anomaly_streaming() -> None:
    """The CLI spells the names out so `--help` need not import numpy; keep them equal."""
    from anomaly.streaming import DETECTOR_NAMES
    from hub.cli.options import DETECTOR_NAMES as CLI_NAMES

    assert tuple(CLI_NAMES) == tuple(DETECTOR_NAMES)

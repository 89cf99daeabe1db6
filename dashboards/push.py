"""`gridwatch dashboards push`: the plan, the isolated grafana-client venv, the worker run.

grafana-client depends on niquests and `urllib3-future`, whose `.pth` file replaces the
`urllib3` package of the environment it is installed into at every interpreter start.
The hub's own code (influxdb-client, requests users) relies on the real urllib3, so
grafana-client lives in a venv of its own, created on first use, and the push runs
there as a subprocess (`grafana_worker.py`). The hub's environment never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dashboards.common import FOLDER_TITLE, FOLDER_UID

CLIENT_REQUIREMENT: Final = "grafana-client>=5.1,<6"
"""Installed into the isolated venv; pyproject's `grafana-push` extra says the same (a
test checks), so `pip install gridwatch[grafana-push]` gets the same range."""
WORKER: Final = Path(__file__).with_name("grafana_worker.py")
TOKEN_ENV: Final = "GW_GRAFANA_PUSH_TOKEN"  # noqa: S105 (a variable name, not a secret)


class PushError(Exception):
    """The push failed; the message says what to do about it."""


class GrafanaAuthError(PushError):
    """401/403: wrong token, or a token without the rights to write."""


class GrafanaVersionError(PushError):
    """409/412: the object changed in Grafana since it was read."""


class GrafanaUnreachable(PushError):
    """Connection refused, DNS, TLS or timeout."""


class ClientEnvError(PushError):
    """The grafana-client venv could not be created or used."""


@dataclass(frozen=True, slots=True)
class PushPlan:
    url: str
    datasource: dict[str, object]
    dashboards: Sequence[dict[str, object]]
    overwrite: bool = False
    timeout_s: float = 10.0
    message: str = "gridwatch dashboards push"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "url": self.url,
                "folder": {"uid": FOLDER_UID, "title": FOLDER_TITLE},
                "datasource": self.datasource,
                "dashboards": list(self.dashboards),
                "overwrite": self.overwrite,
                "timeout_s": self.timeout_s,
                "message": self.message,
            },
            sort_keys=True,
        ).encode()


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    name: str
    result: str


def client_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _has_client(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-I", "-c", "import grafana_client"], capture_output=True, check=False
    )
    return probe.returncode == 0


def ensure_client_env(env_dir: Path, on_message: Callable[[str], None]) -> Path:
    """The venv's python, creating the venv and installing grafana-client if missing."""
    python = client_python(env_dir)
    if _has_client(python):
        return python
    requirement = CLIENT_REQUIREMENT
    on_message(f"creating the grafana-client venv in {env_dir} ({requirement})")
    try:
        venv.EnvBuilder(with_pip=True, clear=False).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ClientEnvError(f"cannot create a venv in {env_dir}: {exc}") from exc
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        raise ClientEnvError(f"pip install {requirement} failed:\n{install.stderr.strip()}")
    return python


def _raise_for(error: dict[str, object], url: str) -> None:
    kind, status, step = error.get("kind"), error.get("status"), error.get("step")
    message = str(error.get("message", ""))
    where = f"{step}: " if step else ""
    if kind == "auth":
        hint = (
            "the token was refused; check --token"
            if status == 401
            else "the token lacks permission; it needs the Admin role (datasources) or "
            "Editor rights on the GridWatch folder"
        )
        raise GrafanaAuthError(f"{where}Grafana answered {status}: {hint} ({message})")
    if kind == "version":
        raise GrafanaVersionError(
            f"{where}Grafana answered {status}: it was changed in Grafana since it was read "
            f"({message}); run the push again, or pass --overwrite to replace it"
        )
    if kind == "network":
        raise GrafanaUnreachable(f"{where}cannot reach Grafana at {url}: {message}")
    raise PushError(f"{where}Grafana answered {status}: {message}")


def run_push(
    plan: PushPlan, token: str, python: Path, on_step: Callable[[Step], None]
) -> list[Step]:
    """Run the worker with the plan; report each step; raise a `PushError` on failure."""
    env = dict(os.environ)
    env[TOKEN_ENV] = token
    proc = subprocess.Popen(
        [str(python), "-I", str(WORKER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(plan.to_json())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the worker died before reading its plan: its exit code and stderr say why
    steps: list[Step] = []
    error: dict[str, object] | None = None
    for raw in proc.stdout:
        record = json.loads(raw)
        if "error" in record:
            error = record["error"]
            continue
        step = Step(record["step"], record["name"], record["result"])
        steps.append(step)
        on_step(step)
    stderr = proc.stderr.read().decode(errors="replace")
    code = proc.wait()
    if error is not None:
        _raise_for(error, plan.url)
    if code != 0:
        raise PushError(f"the grafana-client worker failed (exit {code}):\n{stderr.strip()}")
    return steps


def default_env_dir() -> Path:
    """Next to the hub's venv: `<sys.prefix>-grafana` (e.g. `.venv-grafana`)."""
    return Path(sys.prefix + "-grafana")

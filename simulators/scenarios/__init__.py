"""Scenarios with ground truth: incidents injected into a site's background traffic.

A scenario plans, for a site and a time window, what its incident changes in the
traffic: messages to inject, devices to silence (offline), telemetry to freeze (stuck)
or override (a low battery, a full car park), and the labels that say what happened.
`apply` merges plans into the background stream and keeps each device's protocol
intact (seq +1, ts strictly increasing); `run_scenarios` runs the whole thing and
stamps each label with the times of the first and last message carrying its incident.
Every scenario draws from its own random stream, seeded from (seed, scenario name), so
adding a scenario to a run never changes what the others do.

Inside (each module imports only those before it):
- `plan`: the vocabulary (`Injection`, `Silence`, `Stuck`, `Override`, `ScenarioPlan`,
  `Scenario`, `ScenarioError`);
- `catalogue`: the incident planners and `SCENARIOS`;
- `compose`: `apply` and `run_scenarios`;
- `background`: `background_labels`, ground truth of background traffic's incidents.
"""

from simulators.scenarios.background import background_labels
from simulators.scenarios.catalogue import SCENARIOS, WELFARE_SILENCE_MS
from simulators.scenarios.compose import apply, run_scenarios
from simulators.scenarios.plan import Injection, ScenarioError, ScenarioPlan

__all__ = [
    "SCENARIOS",
    "WELFARE_SILENCE_MS",
    "Injection",
    "ScenarioError",
    "ScenarioPlan",
    "apply",
    "background_labels",
    "run_scenarios",
]

"""Per-fleet controller settings, kept as labels of the fleet spec (`metadata.labels`), so they are versioned with
the spec, live in the same YAML as the fleet, and need no table of their own:

- `fleetwise/advisory: "true" | "false"` — plans are stored but applied only once approved (default: the
  `FLEETWISE_ADVISORY` setting);
- `fleetwise/policy: fleetwise | dedicated | muxserve | qlm | prism` — the planner of cron cycles (default:
  `FLEETWISE_POLICY`).

Changing a label makes a new fleet version like any other change, so plans made before it are refused on apply
("the fleet changed since").
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.settings import POLICIES, Settings
from core.errors import InputError
from core.fleet import FleetSpec

ADVISORY_LABEL = "fleetwise/advisory"
POLICY_LABEL = "fleetwise/policy"
BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class FleetSettings:
    advisory: bool
    policy: str


def fleet_settings(spec: FleetSpec, defaults: Settings) -> FleetSettings:
    """The fleet's settings: its labels over the controller's defaults."""
    check_labels(spec)
    labels = spec.metadata.labels
    advisory = BOOLEANS[labels[ADVISORY_LABEL]] if ADVISORY_LABEL in labels else defaults.advisory
    return FleetSettings(advisory=advisory, policy=labels.get(POLICY_LABEL, defaults.policy))


def check_labels(spec: FleetSpec) -> None:
    """`InputError` naming the label when a `fleetwise/*` label is not one of ours (a misspelt
    `fleetwise/advisroy` would otherwise be stored and silently ignored) or has a value the controller cannot use."""
    labels = spec.metadata.labels
    known = (ADVISORY_LABEL, POLICY_LABEL)
    for name in labels:
        if name.startswith("fleetwise/") and name not in known:
            raise InputError(f"metadata.labels.{name}", labels[name],
                             f"the fleetwise/ prefix is reserved for {', '.join(known)}",
                             problem=f"unknown label {name!r}")
    if ADVISORY_LABEL in labels and labels[ADVISORY_LABEL] not in BOOLEANS:
        raise InputError(f"metadata.labels.{ADVISORY_LABEL}", labels[ADVISORY_LABEL], '"true" or "false"')
    if POLICY_LABEL in labels and labels[POLICY_LABEL] not in POLICIES:
        raise InputError(f"metadata.labels.{POLICY_LABEL}", labels[POLICY_LABEL], f"one of {', '.join(POLICIES)}")


def with_settings(spec: FleetSpec, *, advisory: bool | None = None, policy: str | None = None) -> FleetSpec:
    """A copy of `spec` with the given settings written into its labels (None: left as they are)."""
    labels = dict(spec.metadata.labels)
    if advisory is not None:
        labels[ADVISORY_LABEL] = "true" if advisory else "false"
    if policy is not None:
        labels[POLICY_LABEL] = policy
    updated = FleetSpec.model_validate({**spec.model_dump(mode="json"),
                                        "metadata": {**spec.metadata.model_dump(mode="json"), "labels": labels}})
    check_labels(updated)
    return updated

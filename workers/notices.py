"""The node side of preemption notices: watch the cloud's instance metadata service on a GPU node and forward a
notice to the controller (`POST /v1/fleets/{name}/preemption-notices`) once per interruption.

Each cloud tells a VM ahead of taking it away, on a link-local metadata endpoint only the VM can reach:

- **AWS** — `GET /latest/meta-data/spot/instance-action` answers 404 until EC2 schedules a spot interruption, then
  `{"action": "terminate" | "stop" | "hibernate", "time": "<UTC ISO 8601>"}`, two minutes ahead (hibernation starts
  at once). IMDSv2: a session token from `PUT /latest/api/token` goes in `X-aws-ec2-metadata-token`. AWS advises
  polling every 5 s.
- **GCP** — `GET /computeMetadata/v1/instance/preempted` (header `Metadata-Flavor: Google`) turns `TRUE` when a
  spot or preemptible VM is preempted, 30 s ahead; `instance/maintenance-event` names a host maintenance event,
  `TERMINATE_ON_HOST_MAINTENANCE` for one that stops the VM.
- **Azure** — `GET /metadata/scheduledevents?api-version=2020-07-01` (header `Metadata: true`) lists scheduled
  events; a `Preempt` event (spot eviction, 30 s ahead) or `Terminate` naming this VM among its `Resources`, with
  `NotBefore` the earliest time it happens. The watcher does not acknowledge the event: that would let Azure act
  sooner.

`NoticeWatcher.poll()` asks once (`fleetwise notices` polls every 5 s, as AWS advises). A notice is forwarded once, for
all the VM's GPUs in one request (keyed by what the provider says: action and time, event id), with retries on
transport errors and 5xx answers (tenacity); a 4xx answer (an unknown worker, a bad token) is not retried, and is
kept in `errors`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

PROVIDERS = ("aws", "gcp", "azure")
METADATA_URLS = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal",
                 "azure": "http://169.254.169.254"}
AWS_TOKEN_TTL_S = 21600
AZURE_API_VERSION = "2020-07-01"


@dataclass(frozen=True)
class Notice:
    """One interruption the provider announced."""

    key: str  # what identifies it at the provider (forwarded once)
    leaves_in_s: float | None  # seconds until the VM goes, when the provider says
    detail: str


@dataclass
class NoticeWatcher:
    """Polls `provider`'s metadata service at `metadata_url` and forwards notices for `worker_ids` of `fleet` (the
    GPUs of this VM, which go with it) to the controller at `controller_url` with `token` (scope `plan`).
    `vm_name`: this VM's name in Azure's `Resources` (None: any event of the document is this VM's)."""

    provider: str
    controller_url: str
    fleet: str
    worker_ids: tuple[str, ...]
    token: str
    metadata_url: str | None = None
    vm_name: str | None = None
    timeout_s: float = 2.0
    attempts: int = 5
    sent: list[Notice] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _aws_token: tuple[str, float] | None = None  # (token, monotonic expiry)

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r}: one of {', '.join(PROVIDERS)}")
        base = (self.metadata_url or METADATA_URLS[self.provider]).rstrip("/")
        self._metadata = httpx.Client(base_url=base, timeout=self.timeout_s, trust_env=False)
        self._controller = httpx.Client(base_url=self.controller_url, timeout=120,
                                        headers={"Authorization": f"Bearer {self.token}"})

    def close(self) -> None:
        self._metadata.close()
        self._controller.close()

    def poll(self) -> Notice | None:
        """Ask the metadata service once; forward a notice not forwarded yet. Returns the notice seen, if any."""
        try:
            notice = {"aws": self._aws, "gcp": self._gcp, "azure": self._azure}[self.provider]()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.errors.append(f"metadata: {type(exc).__name__}: {exc}")
            return None
        if notice is not None and all(n.key != notice.key for n in self.sent):
            self._forward(notice)
        return notice

    # -- providers ---------------------------------------------------------------------------------------------------
    def _aws(self) -> Notice | None:
        res = self._metadata.get("/latest/meta-data/spot/instance-action",
                                 headers={"X-aws-ec2-metadata-token": self._token()})
        if res.status_code == 404:
            return None
        res.raise_for_status()
        body = res.json()
        at = datetime.fromisoformat(str(body["time"]))
        return Notice(f"aws:{body['action']}:{body['time']}", _until(at),
                      f"aws spot instance-action {body['action']} at {body['time']}")

    def _token(self) -> str:
        if self._aws_token is None or time.monotonic() >= self._aws_token[1]:
            res = self._metadata.put("/latest/api/token",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)})
            res.raise_for_status()
            self._aws_token = (res.text.strip(), time.monotonic() + AWS_TOKEN_TTL_S - 60)
        return self._aws_token[0]

    def _gcp(self) -> Notice | None:
        headers = {"Metadata-Flavor": "Google"}
        res = self._metadata.get("/computeMetadata/v1/instance/preempted", headers=headers)
        res.raise_for_status()
        if res.text.strip().upper() == "TRUE":
            return Notice("gcp:preempted", 30.0, "gcp instance preempted")
        res = self._metadata.get("/computeMetadata/v1/instance/maintenance-event", headers=headers)
        res.raise_for_status()
        event = res.text.strip()
        if event.startswith("TERMINATE"):
            return Notice(f"gcp:{event}", None, f"gcp maintenance event {event}")
        return None

    def _azure(self) -> Notice | None:
        res = self._metadata.get("/metadata/scheduledevents", params={"api-version": AZURE_API_VERSION},
                                 headers={"Metadata": "true"})
        res.raise_for_status()
        for event in res.json().get("Events", []):
            if event.get("EventType") not in ("Preempt", "Terminate"):
                continue
            if self.vm_name is not None and self.vm_name not in event.get("Resources", []):
                continue
            when = event.get("NotBefore")
            leaves = _until(parsedate_to_datetime(when)) if when else None
            return Notice(f"azure:{event['EventId']}", leaves,
                          f"azure scheduled event {event['EventType']} not before {when or 'unknown'}")
        return None

    # -- the controller ----------------------------------------------------------------------------------------------
    def _forward(self, notice: Notice) -> None:
        """Post the notice for every GPU of the VM in one request (one replan). It counts as sent once the controller
        answered, a refusal too: sending it again would be refused again. A post that failed in transport is tried
        again at the next poll."""
        body: dict[str, object] = {"worker_ids": list(self.worker_ids)}
        if notice.leaves_in_s is not None:
            body["leaves_in_s"] = max(0.0, min(notice.leaves_in_s, 86400.0))
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.attempts), reraise=True,
                                    retry=retry_if_exception(_retryable), wait=wait_exponential(multiplier=0.2, max=2.0)):
                with attempt:
                    self._controller.post(f"/v1/fleets/{self.fleet}/preemption-notices", json=body).raise_for_status()
            self.sent.append(notice)
        except httpx.HTTPStatusError as exc:
            self.sent.append(notice)
            self.errors.append(f"controller: HTTP {exc.response.status_code}: {exc.response.text[:300]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"controller: {type(exc).__name__}: {exc}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _until(at: datetime) -> float:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - datetime.now(UTC)).total_seconds()

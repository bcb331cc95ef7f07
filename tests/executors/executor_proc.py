"""An executor in its own process, so a test can SIGKILL it halfway through a plan and start it again.

`python -m tests.executors.executor_proc --db URL --plan plan.json --worker ID=URL ... --router URL --report out`
executes the plan on HTTP test agents with the durable `db.action_log.SqlActionLog` and writes the report JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.plan import Plan
from db.action_log import SqlActionLog
from executors.attempt import RetryPolicy
from executors.backends import http_workers
from executors.executor import PlanExecutor
from executors.runner import RunnerConfig
from tests.executors.http_agent import HttpTestRouterClient, HttpTestWorkerClient


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--worker", action="append", default=[], help="GPU id=agent URL")
    parser.add_argument("--router", required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    urls = dict(item.split("=", 1) for item in args.worker)
    workers = http_workers(urls, lambda worker_id, url: HttpTestWorkerClient(url, worker_id),
                           HttpTestRouterClient(args.router))
    config = RunnerConfig(max_concurrency=4, retry=RetryPolicy(timeout_floor_s=10.0, backoff_initial_s=0.05))
    executor = PlanExecutor(workers, SqlActionLog.from_url(args.db), config=config)
    report = executor.execute(Plan.model_validate_json(args.plan.read_text()))
    args.report.write_text(report.model_dump_json(indent=2))


if __name__ == "__main__":
    main()

"""LatencyModel.admit_s in the simulator: once per request that reaches an idle engine (a busy one takes requests
between iterations), on its TTFT and end-to-end latency, never on TPOT or on the device's iterations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.actions import Action, ActivateModel
from core.catalog import GPU_CATALOG, MODEL_CATALOG
from core.latency import LatencyBook, LatencyModel, roofline
from core.requests import Request
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.planners import StaticPlanner
from simulator.worker import LocalHooks, SimulatedWorker
from tests.factories import make_table
from tests.simulator.conftest import small_fleet

# An iteration costs 10 ms, plus 1 ms per prefill token and 2 ms per decoding sequence (times by hand).
SIMPLE = LatencyModel(arch="Llama-3.1-8B", gpu_type="H100-SXM", tp=1, c0_s=0.01, c_prefill_s=0.001, c_attn_s=0.0,
                      c_decode_s=0.002, c_kv_s=0.0, disk_to_host_s=4.0, host_to_gpu_s=1.0,
                      kv_swap_bytes_per_s=131072e4, kv_bytes_per_token=131072, source="profile:simple")


def _served(model: LatencyModel, arrivals: list[float]) -> list:
    """Requests of 100 prompt and 3 output tokens at `arrivals` on one loaded GPU; the finished sequences."""
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}])
    hooks = LocalHooks()
    worker = SimulatedWorker("h100/0", fleet, LatencyBook(profiles={("Llama-3.1-8B", "H100-SXM", 1): model}),
                             SimConfig(check_invariants=True), hooks)
    hooks.workers[worker.worker_id] = worker
    worker.apply(Action(plan_id="p", seq=0, worker_id=worker.worker_id, reason="test", revision=1,
                        args=ActivateModel(model="chat", replica_id="chat@h100/0", tp=1, gpu_ids=("h100/0",))))
    hooks.kernel.run()
    start = hooks.kernel.now_s
    for i, t in enumerate(arrivals):
        hooks.kernel.run(until_s=start + t)
        assert worker.submit(Request(i, start + t, "chat", "interactive", 100, 3)).status == "accepted"
    hooks.kernel.run()
    return sorted(hooks.finished, key=lambda s: s.seq_id)


def test_intake_delays_requests_reaching_an_idle_engine_once_and_leaves_the_iterations_alone() -> None:
    plain = _served(SIMPLE, [0.0, 0.0, 0.5])
    admitted = _served(replace(SIMPLE, admit_s=0.003), [0.0, 0.0, 0.5])
    # Without intake, by hand: a prefills 0–110 ms; b prefills while a decodes (10 + 100 + 2 ms) to 222 ms; both
    # decode (14 ms) to 236 ms, when a ends; b decodes alone (12 ms) to 248 ms. c arrives to an idle device.
    assert [s.ttft_s for s in plain] == pytest.approx([0.110, 0.222, 0.110])
    # a and c wake an idle engine; b arrives while a's prefill runs and is taken at the next iteration
    assert [s.ttft_s for s in admitted] == pytest.approx([0.113, 0.222, 0.113])
    assert [s.finish_s - s.arrival_s for s in admitted] == pytest.approx([0.239, 0.248, 0.137])
    assert [s.tpot_s for s in admitted] == pytest.approx([s.tpot_s for s in plain])


def test_a_fleet_run_adds_the_intake_to_the_ttft_of_requests_reaching_idle_gpus_and_nothing_to_tpot() -> None:
    fleet = small_fleet()
    table = make_table(120, rate_per_s=40.0, seed=5, prompt_tokens=300, output_tokens=20)
    base = roofline(MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["H100-SXM"], 1)

    def run(admit_s: float):
        book = LatencyBook(profiles={(base.arch, base.gpu_type, 1): replace(base, admit_s=admit_s)})
        return FleetSimulation(fleet, table, StaticPlanner(), config=SimConfig(check_invariants=True), book=book).run()

    plain, admitted = run(0.0), run(0.004)
    assert admitted.completed.all() and plain.completed.all()
    added = admitted.ttft_s - plain.ttft_s
    idle = np.isclose(added, 0.004, rtol=0, atol=1e-12)
    assert np.all(idle | np.isclose(added, 0.0, rtol=0, atol=1e-12))
    assert 0 < idle.sum() < len(added)  # at 40 req/s some requests find their GPU idle, others busy
    np.testing.assert_allclose(admitted.tpot_s, plain.tpot_s, rtol=0, atol=1e-12)
    assert admitted.figures()["ttft_s"] != plain.figures()["ttft_s"]

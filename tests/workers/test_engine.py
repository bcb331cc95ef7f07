"""The paged engine against the dense reference: batching, chunking, pool sharing and preemption must not change
a single greedy token."""

import pytest

from core.actions import Residency
from core.errors import InputError
from tests.workers.engines import dense_tokens, make_engine, request
from workers.handles import SamplingParams


def test_two_models_in_one_pool_generate_exactly_the_dense_tokens() -> None:
    engine = make_engine(max_num_batched_tokens=40)  # prompts of up to 61 tokens are prefilled in chunks
    handles = [engine.submit(request(i, "ab"[i % 2], prompt=5 + 7 * i, output=12))[1] for i in range(8)]
    reports = engine.run_until_idle()
    assert {r.model for r in reports} == {"a", "b"}
    assert any(r.prefill_tokens and r.decode_seqs for r in reports), "some iteration mixed prefill and decode"
    for h in handles:
        assert h.finish_reason == "length"
        assert h.tokens == dense_tokens(h.model, h.prompt_token_ids, 12)
    engine.scheduler.check_invariants()
    assert engine.pool.num_used_pages == 0


def test_running_out_of_pages_preempts_by_priority_and_every_request_still_matches() -> None:
    engine = make_engine(activate=("a",), kv_pages=6)  # 384 tokens for 10 requests of up to 88 tokens
    handles = [engine.submit(request(i, "a", "batch" if i % 3 else "interactive", prompt=40, output=48))[1]
               for i in range(10)]
    engine.run_until_idle()
    assert engine.scheduler.num_preemptions > 0
    for h in handles:
        assert h.finish_reason == "length"
        assert h.tokens == dense_tokens("a", h.prompt_token_ids, 48)
    # Offline requests resume from their host checkpoints: nothing of theirs is ever recomputed.
    assert all(h.num_recomputed_tokens == 0 for i, h in enumerate(handles) if i % 3)


def test_a_paused_offline_request_resumes_with_zero_recomputed_tokens_and_the_same_output() -> None:
    engine = make_engine(activate=("b",))
    _, handle = engine.submit(request(1, "b", "batch", prompt=30, output=40))
    for _ in range(8):
        engine.step()
    assert engine.scheduler.pause_offline([1]) == [1]
    assert engine.pool.pages_used("b") == 0 and engine.pool.host_tokens(1) > 0
    assert engine.step() is None  # paused: nothing runs
    engine.scheduler.resume_offline([1])
    engine.run_until_idle()
    assert handle.num_preemptions == 1 and handle.num_recomputed_tokens == 0
    assert handle.tokens == dense_tokens("b", handle.prompt_token_ids, 40)


def test_swapped_out_online_request_comes_back_intact() -> None:
    engine = make_engine(activate=("a",))
    _, handle = engine.submit(request(2, "a", prompt=50, output=30))
    for _ in range(6):
        engine.step()
    assert engine.scheduler.swap_out([2]) == [2]
    engine.step()  # copies the KV out while nothing else runs
    assert engine.memory.host_tokens(2) >= 50
    engine.scheduler.swap_in([2])
    engine.run_until_idle()
    assert handle.num_recomputed_tokens == 0
    assert handle.tokens == dense_tokens("a", handle.prompt_token_ids, 30)
    assert engine.memory.host_tokens(2) == 0, "host blocks are returned once the copy is back"


def test_requests_for_an_inactive_model_are_queued_and_answered_after_activation() -> None:
    engine = make_engine(activate=("a",))
    result, handle = engine.submit(request(3, "b"))
    assert result.status == "queued"
    engine.run_until_idle()
    assert not handle.done
    timing = engine.activate("b")
    assert timing.from_residency is Residency.COLD and timing.disk_to_host_s > 0
    engine.run_until_idle()
    assert handle.finish_reason == "length"


def test_deactivation_to_host_then_back_is_timed_without_a_load() -> None:
    engine = make_engine(activate=("a",))
    assert engine.deactivate("a", Residency.HOST, drain=False)
    assert engine.store.residency("a") is Residency.HOST
    timing = engine.activate("a")
    assert timing.from_residency is Residency.HOST and timing.disk_to_host_s == 0 and timing.host_to_device_s > 0


def test_draining_deactivation_completes_once_requests_finish() -> None:
    engine = make_engine(activate=("a",))
    _, handle = engine.submit(request(4, "a", output=5))
    assert not engine.deactivate("a", Residency.COLD, drain=True)
    assert engine.is_draining("a")
    engine.run_until_idle()
    assert handle.finish_reason == "length" and engine.store.residency("a") is Residency.COLD


def test_reactivating_a_draining_model_cancels_the_drain() -> None:
    engine = make_engine(activate=("a",))
    _, handle = engine.submit(request(4, "a", output=5))
    assert not engine.deactivate("a", Residency.COLD, drain=True)
    assert engine.status().replicas[0].draining
    engine.activate("a")
    assert not engine.is_draining("a") and not engine.status().replicas[0].draining
    engine.run_until_idle()
    assert handle.finish_reason == "length" and engine.store.residency("a") is Residency.ACTIVE


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model": "nope"}, "a model this worker serves"),
    ({"slo_class": "gold"}, "interactive, batch"),
    ({"prompt": 1000, "output": 100}, "context of a: 1024 tokens"),
])
def test_bad_requests_are_rejected_with_the_reason(kwargs: dict, match: str) -> None:
    engine = make_engine(activate=())
    model = kwargs.pop("model", "a")
    slo = kwargs.pop("slo_class", "interactive")
    result, handle = engine.submit(request(5, model, slo, **kwargs))
    assert result.status == "rejected" and match in result.message and handle is None


def test_a_request_larger_than_the_models_kv_share_is_rejected_up_front_not_dropped_later() -> None:
    engine = make_engine(activate=("a",), kv_pages=6)  # 384 tokens
    result, handle = engine.submit(request(8, "a", prompt=300, output=100))
    assert result.status == "rejected" and handle is None
    assert "within the KV cache a holds on this worker now: 384 tokens" in result.message
    result, handle = engine.submit(request(9, "a", prompt=300, output=84))  # exactly fits
    assert result.status == "accepted"
    engine.run_until_idle()
    assert handle.finish_reason == "length"
    # An inactive model's share is not known yet: its request queues (and is dropped only if it never fits).
    assert engine.submit(request(10, "b", prompt=300, output=100))[0].status == "queued"


def test_temperature_sampling_is_reproducible_and_independent_of_batching() -> None:
    params = SamplingParams(temperature=0.8, seed=7)
    alone = make_engine(activate=("a",))
    _, h1 = alone.submit(request(6, output=20), params)
    alone.run_until_idle()
    crowded = make_engine(activate=("a",))
    for i in range(4):
        crowded.submit(request(100 + i, output=20), params)
    _, h2 = crowded.submit(request(6, output=20), params)
    crowded.run_until_idle()
    assert h1.tokens == h2.tokens
    assert h1.tokens != dense_tokens("a", h1.prompt_token_ids, 20)


def test_eos_ends_a_completion_unless_ignored() -> None:
    engine = make_engine(activate=("a",))
    prompt = request(7).__class__(7, 0.0, "a", "interactive", 0, 200, prompt_text="stop here")
    _, handle = engine.submit(prompt, SamplingParams())
    engine.run_until_idle()
    expected = dense_tokens("a", handle.prompt_token_ids, 200)
    eos = 257
    if eos in expected:
        assert handle.finish_reason == "stop" and handle.tokens == expected[: expected.index(eos) + 1]
    else:
        assert handle.finish_reason == "length" and handle.tokens == expected


def test_with_a_latency_profile_offline_requests_yield_to_online_tpot_and_outputs_stay_exact() -> None:
    from core.latency import LatencyModel
    from tests.workers.engines import SOURCES
    from workers.engine import Engine, EngineConfig

    # 10 ms per iteration and 20 ms per decoding sequence: within half the interactive TPOT (200 ms), 4 sequences.
    lm = LatencyModel(arch="Tiny-Llama-2L", gpu_type="CPU", tp=1, c0_s=0.01, c_prefill_s=0.0, c_attn_s=0.0,
                      c_decode_s=0.02, c_kv_s=0.0, disk_to_host_s=1.0, host_to_gpu_s=1.0, kv_swap_bytes_per_s=1e9,
                      kv_bytes_per_token=1024)
    engine = Engine(EngineConfig(kv_pages=16, page_bytes=32 * 1024, max_num_batched_tokens=256), SOURCES[:1],
                    profiles={("Tiny-Llama-2L", "CPU", 1): lm})
    engine.activate("a")
    assert engine.latency("a") is lm
    batch = [engine.submit(request(i, "a", "batch", prompt=8, output=30))[1] for i in range(1, 7)]
    for _ in range(3):
        engine.step()
    running = engine.scheduler._models["a"].running
    assert len(running) == 6  # no online work: offline requests take what KV allows
    _, online = engine.submit(request(10, "a", "interactive", prompt=8, output=10))
    engine.step()
    assert len(running) == 4 and any(s.seq_id == 10 for s in running)
    engine.run_until_idle()
    for handle in batch:
        assert handle.num_recomputed_tokens == 0 and handle.tokens == dense_tokens("a", handle.prompt_token_ids, 30)
    assert sum(h.num_preemptions for h in batch) == 3  # the three latest paused once, resumed from checkpoints
    assert online.tokens == dense_tokens("a", online.prompt_token_ids, 10)


def _dense_shaped(model: str, prompt: tuple[int, ...], n: int, *, presence: float, frequency: float,
                  bias: dict[int, float]) -> list[int]:
    """Greedy tokens of the dense reference with OpenAI's penalties and biases applied by hand, token by token."""
    import torch

    from tests.workers.engines import _dense
    from workers.reference import dense_logits

    seq, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(n):
            row = dense_logits(_dense(model), seq)[-1].double()
            for token in set(out):
                row[token] -= frequency * out.count(token) + presence
            for token, b in bias.items():
                row[token] += b
            out.append(int(row.argmax()))
            seq.append(out[-1])
    return out


@pytest.mark.parametrize(("presence", "frequency", "bias"), [
    (1.5, 0.0, {}), (0.0, 0.7, {}), (-2.0, 0.0, {}), (0.5, 0.5, {65: 3.0, 66: -100.0}),
])
def test_penalties_and_biases_match_the_dense_reference_in_a_busy_batch(presence: float, frequency: float,
                                                                         bias: dict[int, float]) -> None:
    engine = make_engine(activate=("a",))
    for i in range(3):  # neighbours without penalties share every step's batch
        engine.submit(request(200 + i, output=16))
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency, logit_bias=tuple(bias.items()),
                            ignore_eos=True)
    _, handle = engine.submit(request(9, output=48), params)
    engine.run_until_idle()
    plain = dense_tokens("a", handle.prompt_token_ids, 48)  # 34 distinct tokens in 48: it repeats
    assert handle.tokens == _dense_shaped("a", handle.prompt_token_ids, 48, presence=presence, frequency=frequency,
                                          bias=bias)
    assert handle.tokens != plain
    distinct = len(set(handle.tokens))
    assert distinct > len(set(plain)) if presence + frequency > 0 else distinct < len(set(plain))
    assert 66 not in handle.tokens or 66 not in bias


def test_sampling_parameters_out_of_range_are_refused() -> None:
    with pytest.raises(InputError, match="presence_penalty: 2.5 is not allowed; a number in"):
        SamplingParams(presence_penalty=2.5)
    with pytest.raises(InputError, match="logit_bias"):
        SamplingParams(logit_bias=((3, 101.0),))
    with pytest.raises(InputError, match="logprobs: 21 is not allowed; a number of alternatives from 0 to 20"):
        SamplingParams(logprobs=21)
    with pytest.raises(InputError, match="prompt_logprobs: -1 is not allowed"):
        SamplingParams(prompt_logprobs=-1)


def test_logprobs_ride_along_without_changing_a_token() -> None:
    """Asking for log-probabilities changes nothing else: the tokens are the dense reference's, one entry each."""
    engine = make_engine(activate=("a",))
    _, plain = engine.submit(request(11, output=12), SamplingParams(ignore_eos=True))
    _, scored = engine.submit(request(12, output=12), SamplingParams(ignore_eos=True, logprobs=2))
    engine.run_until_idle()
    assert plain.tokens == dense_tokens("a", plain.prompt_token_ids, 12)
    assert scored.tokens == dense_tokens("a", scored.prompt_token_ids, 12)
    assert [lp.token for lp in scored.logprobs] == scored.tokens and not plain.logprobs
    assert all(len(lp.top) == 2 and lp.top[0][0] == lp.token and lp.logprob <= 0 for lp in scored.logprobs)


def test_prompt_logprobs_equal_the_dense_reference_across_chunks_and_a_recompute() -> None:
    """Every prompt token after the first is scored under the tokens before it, whether the prompt was prefilled in
    one pass or in chunks, and after a preemption that recomputed it; the output stays the dense reference's."""
    import torch

    from tests.workers.engines import _dense
    from workers.reference import dense_logits

    engine = make_engine(activate=("a",), max_num_batched_tokens=40)  # a 70-token prompt takes two chunks
    _, whole = engine.submit(request(21, prompt=30, output=4), SamplingParams(ignore_eos=True, prompt_logprobs=3))
    _, chunked = engine.submit(request(22, prompt=70, output=4), SamplingParams(ignore_eos=True, prompt_logprobs=0))
    engine.run_until_idle()
    for handle, k in ((whole, 3), (chunked, 0)):
        prompt = list(handle.prompt_token_ids)
        with torch.inference_mode():
            ref = torch.log_softmax(dense_logits(_dense("a"), prompt).float(), -1)
        scored = handle.prompt_logprobs
        assert scored[0] is None and all(lp is not None for lp in scored[1:]) and len(scored) == len(prompt)
        assert [lp.token for lp in scored[1:]] == prompt[1:]
        assert [lp.logprob for lp in scored[1:]] == pytest.approx(
            [float(ref[i - 1, t]) for i, t in enumerate(prompt) if i], abs=1e-4)
        assert all(len(lp.top) == k for lp in scored[1:])
        if k:
            assert [lp.top[0][0] for lp in scored[1:]] == ref[:-1].argmax(-1).tolist()
        assert handle.tokens == dense_tokens("a", handle.prompt_token_ids, 4)
    # A recompute after a preemption writes the same values again.
    engine = make_engine(activate=("a",), kv_pages=2)
    _, first = engine.submit(request(23, prompt=60, output=40), SamplingParams(ignore_eos=True, prompt_logprobs=0))
    _, second = engine.submit(request(24, prompt=60, output=40), SamplingParams(ignore_eos=True, prompt_logprobs=0))
    engine.run_until_idle()
    assert first.num_recomputed_tokens + second.num_recomputed_tokens > 0
    for handle in (first, second):
        assert handle.tokens == dense_tokens("a", handle.prompt_token_ids, 40)
        prompt = list(handle.prompt_token_ids)
        with torch.inference_mode():
            ref = torch.log_softmax(dense_logits(_dense("a"), prompt).float(), -1)
        assert [lp.logprob for lp in handle.prompt_logprobs[1:]] == pytest.approx(
            [float(ref[i - 1, t]) for i, t in enumerate(prompt) if i], abs=1e-4)

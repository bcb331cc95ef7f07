"""The engine of one device: the shared scheduler and KV pool (`workers.scheduler`, `workers.kv_pool`, the same code
the simulator runs), the physical KV memory, the resident models and their runners.

One `step()` is one iteration: the scheduler picks one model's batch; the engine performs the batch's swap-out and
swap-in copies, runs the forward pass, copies the offline sequences' new KV to host (checkpoint), and reports the
sampled tokens back (`on_batch_done`); finished and dropped requests are answered through their handles.

Every public method takes `self.lock`, so the HTTP agent's threads and the stepping thread (`EngineLoop`) may call in
at any time; a call waits at most one iteration. Weight loading runs outside the lock (`activate`), so the other
models keep serving while one loads.

Given latency profiles (`fleetwise profile`), the scheduler sizes each model's offline work by the time its online
TPOT targets leave (workers.harvest); without one for a model, KV and the token budget alone limit it.

Memory: the KV page buffer is allocated once (`kv_pages` pages shared by all models); weights of active models must
fit in `memory_gib` next to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import torch

from core.actions import Residency
from core.catalog import GIB
from core.errors import InputError
from core.fleet import SLOClass
from core.latency import LatencyModel
from core.requests import Request
from core.state import group_id
from core.status import ReplicaStatus, SubmitResult, WorkerStatus
from workers.attention import AttentionBackend, TorchAttention, TritonAttention
from workers.handles import REPLAY, RequestHandle, SamplingParams, TokenLogprob
from workers.kernels.layout import PagedKVLayout
from workers.kv_memory import KVMemory, pool_layout
from workers.kv_pool import KVPool, fit_block_size
from workers.model import torch_dtype
from workers.residency import ActivationTiming, ModelSource, ModelStore
from workers.runner import ModelRunner, SeqWork
from workers.scheduler import Batch, Scheduler, SchedulerConfig
from workers.sequence import SeqStatus, Sequence
from workers.tokenizer import ByteTokenizer

DEFAULT_SLO_CLASSES = (
    SLOClass(name="interactive", ttft_s=2.0, tpot_s=0.2, priority=0),
    SLOClass(name="batch", online=False, priority=9),
)


@dataclass(frozen=True)
class EngineConfig:
    """Limits and identity of one device's engine. Never mutated after construction."""

    worker_id: str = "local/0"  # GPU id in the fleet (`<pool>/<index>`)
    pool: str = "local"
    gpu_type: str = "CPU"  # catalog GPU name reported in status
    device: str = "cpu"  # torch device
    memory_gib: float = 4.0  # device memory for weights + KV pages
    kv_pages: int = 64  # pages of the shared KV pool
    page_bytes: int = 256 * 1024
    max_block_tokens: int = 16
    host_kv_gib: float = 0.25  # host memory for swapped-out and checkpointed KV
    max_num_batched_tokens: int = 1024
    max_num_seqs: int = 64
    group_window_s: float = 10.0  # arrival window of request groups (core.state.group_id), as the simulator
    attention: str = "auto"  # "auto" (Triton on CUDA, torch elsewhere), "torch" or "triton"

    def __post_init__(self) -> None:
        if self.kv_pages < 1:
            raise InputError("kv_pages", self.kv_pages, "at least 1 page")
        if self.attention not in ("auto", "torch", "triton"):
            raise InputError("attention", self.attention, "auto, torch or triton")
        if self.kv_pages * self.page_bytes > self.memory_gib * GIB:
            raise InputError("kv_pages", self.kv_pages, f"pages that fit in memory_gib={self.memory_gib}")


@dataclass(frozen=True)
class StepReport:
    """One executed iteration: the batch features of `core.latency.LatencyModel.iteration_s` and its wall time."""

    model: str
    prefill_tokens: int
    prefill_attn: float
    decode_seqs: int
    kv_tokens: int
    swap_tokens: int
    duration_s: float  # from scheduling to the tokens delivered (tokens are stamped when the forward pass ends)
    num_finished: int


class Engine:
    """Serves the models of one device (see the module docstring)."""

    def __init__(self, config: EngineConfig, models: Iterable[ModelSource],
                 slo_classes: Iterable[SLOClass] = DEFAULT_SLO_CLASSES,
                 clock: Callable[[], float] = time.monotonic,
                 profiles: Mapping[tuple[str, str, int], LatencyModel] | None = None) -> None:
        self.config = config
        self.profiles = dict(profiles or {})  # (arch, gpu_type, tp) → iteration times (core.latency.load_profiles)
        self.device = torch.device(config.device)
        self.clock = clock
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.slo_classes = {c.name: c for c in slo_classes}
        self.store = ModelStore(list(models), self.device)
        self.pool = KVPool(config.kv_pages, page_bytes=config.page_bytes,
                           host_capacity_bytes=int(config.host_kv_gib * GIB))
        self.scheduler = Scheduler(self.pool, SchedulerConfig(
            max_num_batched_tokens=config.max_num_batched_tokens, max_num_seqs=config.max_num_seqs))
        self.memory = KVMemory(num_pages=config.kv_pages, page_bytes=config.page_bytes,
                               host_capacity_bytes=self.pool.host_capacity_bytes, device=self.device)
        self.backend = self._backend()
        self.replica_ids: dict[str, str] = {}  # model → replica id given at activation
        self.finish_listeners: list[Callable[[RequestHandle], None]] = []
        self._runners: dict[str, ModelRunner] = {}
        self._handles: dict[int, RequestHandle] = {}
        self._last_request_s: dict[str, float] = {}
        self._loading: set[str] = set()  # models whose weights are being copied in (outside the lock)
        self._draining: dict[str, Residency] = {}  # model → where it goes once its requests are done
        self.num_steps = 0
        self.failure: str | None = None  # why the engine stopped stepping (`halt`); new requests are refused

    # -- models --------------------------------------------------------------------------------------------------
    def layout(self, model: str) -> PagedKVLayout:
        arch = self.store.source(model).arch
        dtype = torch_dtype(arch)
        per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * torch.empty((), dtype=dtype).element_size()
        block = fit_block_size(per_token, self.config.page_bytes, self.config.max_block_tokens)
        return PagedKVLayout(arch.num_layers, arch.num_kv_heads, arch.head_dim, block, self.config.page_bytes, dtype)

    def latency(self, model: str) -> LatencyModel | None:
        """The model's latency profile on this device (one GPU), if one was given."""
        return self.profiles.get((self.store.source(model).arch.name, self.config.gpu_type, 1))

    def ensure_scheduled(self, model: str) -> None:
        """Register the model's KV layout with the scheduler and pool (inactive until its weights are on device)."""
        with self.lock:
            if not self.scheduler.has_model(model):
                layout = self.layout(model)
                self.scheduler.add_model(model, pool_layout(layout), active=False, latency=self.latency(model))
                self.memory.add_model(model, layout)

    def activate(self, model: str, *, replica_id: str | None = None) -> ActivationTiming:
        """Load the model's weights onto the device and start serving it. Raises InputError if they do not fit."""
        with self.lock:
            self.ensure_scheduled(model)
            if self.store.residency(model) is Residency.ACTIVE:
                # Re-activating a draining model cancels the drain: it keeps serving (as the simulator does).
                self._draining.pop(model, None)
                self.replica_ids[model] = replica_id or self.replica_ids.get(model, model)
                return self.store.activate(model)
            need = self.store.weight_bytes(model)
            free = self.config.memory_gib * GIB - self.memory.device_bytes - self.store.active_weight_bytes
            free -= sum(self.store.weight_bytes(m) for m in self._loading)
            if need > free:
                raise InputError("model", model, f"weights of {need / GIB:.3f} GiB; {free / GIB:.3f} GiB of device "
                                 "memory is free (deactivate a model first)", problem="does not fit")
            self._loading.add(model)
        try:
            timing = self.store.activate(model)  # outside the lock: other models keep serving
        finally:
            with self.lock:
                self._loading.discard(model)
        with self.lock:
            self._runners[model] = ModelRunner(self.store.model(model), self.memory.device_buffer,
                                               self.layout(model), self.backend)
            self.replica_ids[model] = replica_id or self.replica_ids.get(model, model)
            self.scheduler.set_active(model, True)
            self.wakeup.notify_all()
        return timing

    def deactivate(self, model: str, to: Residency, *, drain: bool) -> bool:
        """Stop serving the model. With `drain` and requests left, returns False and completes in a later `step()`
        once they are done. Without drain, running requests are preempted and stay queued for a later activation."""
        with self.lock:
            self._draining.pop(model, None)
            if self.store.residency(model) is not Residency.ACTIVE:
                self.store.deactivate(model, to)
                return True
            live = [s.seq_id for s in self.scheduler.sequences(model)]
            if drain and live:
                self._draining[model] = to
                return False
            self.scheduler.preempt(live)
            self.scheduler.set_active(model, False)
            self._runners.pop(model, None)
            self.store.deactivate(model, to)
            return True

    # -- requests ------------------------------------------------------------------------------------------------
    def submit(self, request: Request, params: SamplingParams = REPLAY) -> tuple[SubmitResult, RequestHandle | None]:
        """Queue a request: `accepted` (model active), `queued` (model known but not active) or `rejected`."""
        with self.lock:
            if self.failure is not None:
                return SubmitResult(request_id=request.request_id, status="rejected",
                                    message=f"engine stopped: {self.failure}"), None
            try:
                seq = self.validate(request)
            except InputError as exc:
                return SubmitResult(request_id=request.request_id, status="rejected", message=str(exc)), None
            self.ensure_scheduled(request.model)
            self.scheduler.add(seq)
            handle = RequestHandle(request.request_id, request.model, seq.prompt_token_ids or (), params)
            self._handles[seq.seq_id] = handle
            self._last_request_s[request.model] = seq.arrival_s
            active = self.store.residency(request.model) is Residency.ACTIVE
            self.wakeup.notify_all()
            return SubmitResult(request_id=request.request_id, status="accepted" if active else "queued"), handle

    def halt(self, reason: str) -> None:
        """The engine can no longer step (its loop died): end every live request with `error: <reason>`, so that
        no client waits for tokens that will never come, and refuse new ones. The scheduler is left as it is: the
        step that failed may have left it half updated."""
        with self.lock:
            self.failure = reason
            handles, self._handles = list(self._handles.values()), {}
            for handle in handles:
                handle.finish(f"error: {reason}")
                for listener in self.finish_listeners:
                    listener(handle)

    def validate(self, request: Request) -> Sequence:
        """The sequence `submit` would queue for `request`; raises InputError naming what is wrong."""
        if not self.store.knows(request.model):
            raise InputError("model", request.model, f"a model this worker serves: {', '.join(self.store.names)}")
        slo = self.slo_classes.get(request.slo_class)
        if slo is None:
            raise InputError("slo_class", request.slo_class, f"one of {', '.join(self.slo_classes)}")
        if request.request_id in self._handles:
            raise InputError("request_id", request.request_id, "an id not already in use on this worker")
        if request.output_tokens < 1:
            raise InputError("output_tokens", request.output_tokens, "at least 1 token")
        source = self.store.source(request.model)
        ids = prompt_token_ids(request, source.arch.vocab_size)
        limit = source.arch.max_context_tokens
        if len(ids) + request.output_tokens > limit:
            raise InputError("prompt_tokens", len(ids), f"prompt + max tokens ({len(ids)} + {request.output_tokens}) "
                             f"within the context of {request.model}: {limit} tokens",
                             problem=f"{len(ids) + request.output_tokens} tokens exceed the context")
        if self.scheduler.has_model(request.model) and self.store.residency(request.model) is Residency.ACTIVE:
            room = self.scheduler.kv_capacity_tokens(request.model)
            if len(ids) + request.output_tokens > room:  # admitted, it would be dropped once it outgrew its share
                raise InputError("prompt_tokens", len(ids),
                                 f"prompt + max tokens ({len(ids)} + {request.output_tokens}) within the KV cache "
                                 f"{request.model} holds on this worker now: {room} tokens",
                                 problem=f"{len(ids) + request.output_tokens} tokens exceed the KV cache")
        now = self.clock()
        gid = group_id(request.model, request.slo_class,
                       request.arrival_s // self.config.group_window_s * self.config.group_window_s)
        req = replace(request, prompt_tokens=len(ids), prompt_token_ids=ids, arrival_s=now)
        return Sequence.from_request(req, slo, group_id=gid)

    def handle(self, request_id: int) -> RequestHandle | None:
        return self._handles.get(request_id)

    def abort(self, request_id: int, reason: str) -> bool:
        """End a live request now (its client went away): its device pages and host copies are freed and its handle
        finishes with `removed: <reason>`. False when it had already ended."""
        with self.lock:
            removed = self.scheduler.remove([request_id])
            for seq in removed:
                self._finish(seq, f"removed: {reason}")
            self.wakeup.notify_all()
            return bool(removed)

    # -- iterations ----------------------------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        with self.lock:
            return self.scheduler.has_runnable_work

    def step(self) -> StepReport | None:
        """Run one iteration; None when nothing can run now."""
        with self.lock:
            start = self.clock()
            batch = self.scheduler.schedule(start)
            if batch is None:
                self._deliver({}, [], set())  # scheduling may have dropped requests that can never fit
                return None
            self.memory.to_host(batch.swap_out)
            self.memory.to_device(batch.swap_in)
            tokens: dict[int, int] = {}
            logprobs: dict[int, TokenLogprob] = {}
            if batch.has_compute:
                runner = self._runners[batch.model]
                tokens = runner.run(self._work(batch))
                logprobs = runner.last_logprobs
                for seq_id, (first, scored) in runner.last_prompt_logprobs.items():
                    self._handles[seq_id].score_prompt(first, scored)  # before the first token is out
                self.memory.to_host(batch.checkpoint)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            end = self.clock()
            eos = self.store.source(batch.model).eos_token_id if batch.model else None
            finished = {i for i, t in tokens.items() if self._ends(self._handles[i], t, eos)}
            done = self.scheduler.on_batch_done(batch, end, finished=finished, token_ids=tokens)
            self.memory.sync_host(self.pool)
            self._deliver(tokens, done, finished, logprobs)
            self.num_steps += 1
            # The iteration's cost runs to here (bookkeeping and delivery included): the next one starts now.
            return StepReport(batch.model, batch.prefill_tokens, batch.prefill_attn, batch.decode_seqs,
                              batch.kv_tokens, batch.swap_tokens, self.clock() - start, len(done))

    @staticmethod
    def _ends(handle: RequestHandle, token: int, eos: int | None) -> bool:
        """`token` ends the request: EOS (unless ignored) or the last token of one of its stop sequences."""
        params = handle.params
        return (token == eos and not params.ignore_eos) or (
            bool(params.stop) and params.stops_at(handle.tokens, token))

    def run_until_idle(self, max_steps: int = 1_000_000) -> list[StepReport]:
        """Step until nothing can run (tests, profiling, benchmarks)."""
        reports = []
        for _ in range(max_steps):
            report = self.step()
            if report is None:
                break
            reports.append(report)
        return reports

    def _work(self, batch: Batch) -> list[SeqWork]:
        out = []
        for seq in batch.decodes:
            pos = seq.num_computed_tokens
            out.append(self._seq_work(seq, pos, 1, sample=True))
        for seq, start, n in batch.prefills:
            out.append(self._seq_work(seq, start, n, sample=start + n == seq.num_tokens))
        return out

    def _seq_work(self, seq: Sequence, start: int, n: int, *, sample: bool) -> SeqWork:
        prompt = seq.prompt_token_ids or ()
        p = len(prompt)
        if start + n <= p:
            ids = prompt[start : start + n]
        else:
            ids = tuple(prompt[start:]) + tuple(seq.output_token_ids[max(0, start - p) : start + n - p])
        params = self._handles[seq.seq_id].params
        # Prompt log-probabilities: the row at position i scores prompt token i + 1 (the prompt's last row predicts
        # the first output token, which sampling scores).
        scored = tuple(prompt[start + 1 : min(start + n + 1, p)]) if params.prompt_logprobs is not None else ()
        return SeqWork(seq.seq_id, ids, start, seq.block_table, sample, params, params.seed ^ seq.seq_id,
                       tuple(seq.output_token_ids) if sample and params.penalized else (), scored)

    def _deliver(self, tokens: dict[int, int], done: list[Sequence], finished: set[int],
                 logprobs: dict[int, TokenLogprob] | None = None) -> None:
        for seq_id, token in tokens.items():
            self._handles[seq_id].push(token, (logprobs or {}).get(seq_id))
        for seq in done:
            self._finish(seq, "stop" if seq.seq_id in finished else "length")
        for seq in self.scheduler.take_dropped():
            self._finish(seq, f"dropped: {seq.drop_reason}")
        self._finish_drains()

    def _finish(self, seq: Sequence, reason: str) -> None:
        handle = self._handles.pop(seq.seq_id, None)
        if handle is None:
            return
        handle.finish(reason, ttft_s=seq.ttft_s, tpot_s=seq.tpot_s, num_preemptions=seq.num_preemptions,
                      num_recomputed_tokens=seq.num_recomputed_tokens)
        for listener in self.finish_listeners:
            listener(handle)

    def _finish_drains(self) -> None:
        for model, to in list(self._draining.items()):
            if not self.scheduler.sequences(model):
                self.deactivate(model, to, drain=False)

    def is_draining(self, model: str) -> bool:
        return model in self._draining

    def _backend(self) -> AttentionBackend:
        choice = self.config.attention
        if choice == "auto":
            choice = "triton" if self.device.type == "cuda" else "torch"
        return TritonAttention() if choice == "triton" else TorchAttention()

    # -- status --------------------------------------------------------------------------------------------------
    def status(self, *, revision: int = 0) -> WorkerStatus:
        with self.lock:
            return WorkerStatus(
                worker_id=self.config.worker_id, pool=self.config.pool, gpu_type=self.config.gpu_type,
                time_s=self.clock(), memory_total_gib=self.config.memory_gib,
                memory_weights_gib=self.store.active_weight_bytes / GIB, kv_page_bytes=self.config.page_bytes,
                kv_pages_total=self.pool.num_pages, kv_pages_used=self.pool.num_used_pages,
                host_kv_pages_used=self.pool.host_pages_used,
                replicas=tuple(self._replica_status(m) for m in self.store.names if self._listed(m)),
                revision=revision,
            )

    def _listed(self, model: str) -> bool:
        return self.scheduler.has_model(model) or self.store.residency(model) is not Residency.COLD

    def _replica_status(self, model: str) -> ReplicaStatus:
        sched, pool = self.scheduler, self.pool
        scheduled = sched.has_model(model)
        count = (lambda status: sched.num_with_status(status, model)) if scheduled else (lambda status: 0)
        return ReplicaStatus(
            replica_id=self.replica_ids.get(model, model), model=model, residency=self.store.residency(model),
            gpu_ids=(self.config.worker_id,),
            kv_limit_pages=pool.limit_pages(model) if scheduled else None,
            kv_pages_used=pool.pages_used(model) if scheduled else 0,
            limit_revision=pool.limit_revision(model) if scheduled else 0,
            limit_pending=pool.limit_pending(model) if scheduled else False,
            num_running=sched.num_running(model) if scheduled else 0,
            num_waiting=count(SeqStatus.WAITING) + count(SeqStatus.PREEMPTED),
            num_swapped=count(SeqStatus.SWAPPED), num_offline_paused=count(SeqStatus.PAUSED_OFFLINE),
            last_request_s=self._last_request_s.get(model),
            draining=model in self._draining,
        )


def prompt_token_ids(request: Request, vocab_size: int) -> tuple[int, ...]:
    """The request's prompt as token ids: given ids, the byte-level encoding of its text, or — for trace replay,
    where only lengths are known — `prompt_tokens` ids drawn from a generator seeded by the request id."""
    if request.prompt_token_ids is not None:
        ids = tuple(int(t) for t in request.prompt_token_ids)
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad or not ids:
            raise InputError("prompt_token_ids", bad[:5] or ids, f"1 or more ids in [0, {vocab_size})")
        return ids
    if request.prompt_text is not None:
        tokenizer = ByteTokenizer()
        if vocab_size != tokenizer.vocab_size:
            raise InputError("prompt_text", request.prompt_text[:40], "token ids: this model has no byte-level "
                             f"vocabulary ({vocab_size} tokens)")
        return tuple(tokenizer.encode(request.prompt_text))
    if request.prompt_tokens < 1:
        raise InputError("prompt_tokens", request.prompt_tokens, "at least 1 token")
    gen = torch.Generator().manual_seed(request.request_id & 0x7FFF_FFFF_FFFF_FFFF)
    return tuple(torch.randint(0, min(vocab_size, 256), (request.prompt_tokens,), generator=gen).tolist())

"""Factories for engine tests: a CPU engine with the two tiny catalog models sharing one KV pool."""

from __future__ import annotations

from functools import cache

from core.catalog import MODEL_CATALOG
from core.requests import Request
from workers.engine import Engine, EngineConfig
from workers.model import LlamaModel, random_weights
from workers.reference import DenseDecoder, dense_generate
from workers.residency import ModelSource

SOURCES = (ModelSource("a", MODEL_CATALOG["Tiny-Llama-2L"], seed=1),
           ModelSource("b", MODEL_CATALOG["Tiny-Llama-4L"], seed=2))


def make_engine(*, activate: tuple[str, ...] = ("a", "b"), **config: object) -> Engine:
    """16 pages of 32 KiB: 64 tokens of model a or 16 of b per page, so tests reach the pool's limits quickly."""
    defaults: dict[str, object] = {"kv_pages": 16, "page_bytes": 32 * 1024, "max_num_batched_tokens": 256}
    engine = Engine(EngineConfig(**{**defaults, **config}), SOURCES)
    for name in activate:
        engine.activate(name)
    return engine


def request(request_id: int, model: str = "a", slo_class: str = "interactive", *, prompt: int = 24,
            output: int = 16) -> Request:
    return Request(request_id, 0.0, model, slo_class, prompt, output)


@cache
def _dense(model: str) -> LlamaModel:
    source = next(s for s in SOURCES if s.name == model)
    return LlamaModel(random_weights(source.arch, source.seed))


@cache
def dense_tokens(model: str, prompt: tuple[int, ...], n: int) -> list[int]:
    """Greedy tokens of the dense reference (no pages), ignoring EOS as trace replay does. Short outputs recompute
    the whole sequence per token; long ones use the contiguous-cache decoder (checked equal in test_model)."""
    if n <= 16:
        return dense_generate(_dense(model), list(prompt), n)
    decoder = DenseDecoder(_dense(model), batch_size=1, max_tokens=len(prompt) + n)
    tokens = decoder.prefill([list(prompt)])
    out = [int(tokens[0])]
    while len(out) < n:
        tokens = decoder.decode(tokens)
        out.append(int(tokens[0]))
    return out

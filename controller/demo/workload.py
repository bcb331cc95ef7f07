"""The demo's traffic: the Azure LLM conversation trace (Splitwise, ISCA'24) when the shared traces are present,
else the bundled synthetic chat mix (`examples/workloads/chat-mix.yaml`), spread over the demo fleet's models by its
workload mix and cut into a history (ingested before the loop starts, as a fleet's past) and the slice replayed.

The tiny models run on a CPU with 1–2k tokens of context, so their requests are shortened (prompt ≤ 256, output
≤ 32 tokens); every other request is replayed as the trace has it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError
from core.fleet import FleetSpec
from core.requests import RequestTable
from workloads.spec import load_workload
from workloads.synth import scale_rate

ROOT = Path(__file__).resolve().parents[2]
AZURE_CONV = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
CHAT_MIX = ROOT / "examples" / "workloads" / "chat-mix.yaml"
TINY_PROMPT_TOKENS = 256
TINY_OUTPUT_TOKENS = 32
TINY_CONTEXT_TOKENS = 4096  # models with a context at most this long count as tiny


def default_workload() -> Path:
    return AZURE_CONV if AZURE_CONV.is_file() else CHAT_MIX


def demo_traffic(fleet: FleetSpec, source: Path, *, history_s: float, duration_s: float, rate_scale: float,
                 seed: int) -> tuple[RequestTable, RequestTable]:
    """(history, replay): the first `history_s` seconds of the source and the `duration_s` after them."""
    table = load_workload(source, fleet=fleet, seed=seed)
    if rate_scale != 1.0:
        table = scale_rate(table, rate_scale, seed=seed + 1)
    start = table.start_s
    if table.duration_s < history_s + duration_s:
        raise InputError("--duration", duration_s, f"at most {max(table.duration_s - history_s, 0):.0f} s: "
                         f"{source.name} spans {table.duration_s:.0f} s and the history takes {history_s:.0f} s")
    table = shorten_tiny(table, fleet)
    return (table.between(start, start + history_s),
            table.between(start + history_s, start + history_s + duration_s))


def shorten_tiny(table: RequestTable, fleet: FleetSpec) -> RequestTable:
    """Clip the lengths of requests for models whose context is at most `TINY_CONTEXT_TOKENS`."""
    tiny = [i for i, name in enumerate(table.model_names)
            if any(m.name == name and m.max_context_tokens <= TINY_CONTEXT_TOKENS for m in fleet.models)]
    rows = np.isin(table.model_idx, tiny)
    prompt = np.where(rows, np.minimum(table.prompt_tokens, TINY_PROMPT_TOKENS), table.prompt_tokens)
    output = np.where(rows, np.minimum(table.output_tokens, TINY_OUTPUT_TOKENS), table.output_tokens)
    return RequestTable(arrival_s=table.arrival_s, model_idx=table.model_idx, slo_idx=table.slo_idx,
                        prompt_tokens=prompt.astype(np.int32), output_tokens=output.astype(np.int32),
                        model_names=table.model_names, slo_names=table.slo_names, request_id=table.request_id,
                        prompt_text=table.prompt_text)

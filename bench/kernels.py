"""Triton paged-attention kernels on a GPU: HBM bandwidth of paged decode, shared pool vs static cache, CUDA graphs.

    python bench/kernels.py [--batches 64,128,256] [--contexts 2048,4096] [--smoke]

On CUDA (Llama-3.1-8B attention shapes: 32 query heads, 8 KV heads, head_dim 128, bf16, 16-token blocks, 2 MiB
pages), per (batch, context):
- `paged decode`: achieved bandwidth = K+V bytes read ÷ kernel time, as a share of the GPU's HBM peak (catalog);
  target ≥ 80 % at batch ≥ 64 and context ≥ 2k;
- `dense SDPA`: torch `scaled_dot_product_attention` over a contiguous `[B, Hkv, T, D]` cache — the baseline;
- `shared ÷ static`: the paged kernel over a pool whose pages interleave with another model's (blocks scattered)
  vs over a statically allocated cache (a sequence's blocks consecutive); target ≤ 1.02;
- `graph`: the launch captured in a CUDA graph and replayed gives the same output (and its replay time).
Without CUDA it writes `"device": "no GPU"` and exits; `--smoke` instead runs every path on CPU under the Triton
interpreter with tiny shapes (a check of this script, not a measurement).
Writes bench/results/kernels.json and prints a Rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.catalog import GPU_CATALOG
from workers.kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref
from workers.kernels.layout import PagedKVLayout, kv_views

RESULTS = ROOT / "bench" / "results"
SHAPES = {"heads": 32, "kv_heads": 8, "head_dim": 128, "block": 16, "page_bytes": 2 * 1024 * 1024}
SMOKE_SHAPES = {"heads": 8, "kv_heads": 2, "head_dim": 16, "block": 4, "page_bytes": 8 * 1024}


def hbm_peak_gbps(name: str) -> float | None:
    for key, catalog in (("H200", "H200"), ("H100", "H100-SXM"), ("A100", "A100-80GB"), ("A10", "A10"), ("L4", "L4")):
        if key in name:
            return GPU_CATALOG[catalog].hbm_gbps
    return None


def paged_cache(batch: int, context: int, shapes: dict, dtype: torch.dtype, device: torch.device, *,
                shared: bool, seed: int = 0):
    """One layer's paged K/V for `batch` sequences of `context` tokens. `shared`: the pool has twice the pages and
    this model's blocks sit on random pages between another model's; else consecutive blocks in a dedicated pool."""
    layout = PagedKVLayout(1, shapes["kv_heads"], shapes["head_dim"], shapes["block"], shapes["page_bytes"], dtype)
    blocks_per_seq = -(-context // layout.block_size)
    needed = batch * blocks_per_seq
    pages = -(-needed // layout.blocks_per_page) * (2 if shared else 1)
    buffer = torch.zeros(pages * layout.page_bytes, dtype=torch.uint8, device=device)
    k, v = kv_views(buffer, layout)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k.copy_(torch.randn(k.shape, generator=gen).to(device))
    v.copy_(torch.randn(v.shape, generator=gen).to(device))
    if shared:  # this model owns a random half of the pages; its blocks are shuffled across them
        own = torch.randperm(pages, generator=gen)[: pages // 2]
        ids = (own[:, None] * layout.blocks_per_page + torch.arange(layout.blocks_per_page)).flatten()
        ids = ids[torch.randperm(len(ids), generator=gen)][:needed]
    else:
        ids = torch.arange(needed)
    tables = ids.view(batch, blocks_per_seq).to(torch.int32).to(device)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return k[:, 0], v[:, 0], tables, lens


def timed_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_point(batch: int, context: int, shapes: dict, dtype: torch.dtype, device: torch.device) -> dict:
    q = torch.randn(batch, shapes["heads"], shapes["head_dim"], device=device).to(dtype)
    shared = paged_cache(batch, context, shapes, dtype, device, shared=True)
    static = paged_cache(batch, context, shapes, dtype, device, shared=False)

    def run(cache):
        return lambda: paged_decode_attention(q, *cache, max_context=context)

    out = run(shared)()
    ref = paged_decode_attention_ref(q, *shared)
    err = float((out.float() - ref.float()).abs().max())
    kv_bytes = 2 * batch * context * shapes["kv_heads"] * shapes["head_dim"] * q.element_size()
    shared_ms, static_ms = timed_ms(run(shared), device), timed_ms(run(static), device)
    dense_k = torch.randn(batch, shapes["kv_heads"], context, shapes["head_dim"], device=device).to(dtype)
    sdpa_ms = timed_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], dense_k, dense_k, enable_gqa=True), device)
    row = {"batch": batch, "context": context, "max_abs_err_vs_ref": err, "kv_bytes": kv_bytes,
           "paged_shared_ms": shared_ms, "paged_static_ms": static_ms, "dense_sdpa_ms": sdpa_ms,
           "paged_gbps": kv_bytes / shared_ms / 1e6, "dense_sdpa_gbps": kv_bytes / sdpa_ms / 1e6,
           "shared_over_static": shared_ms / static_ms}
    if device.type == "cuda":
        row |= cuda_graph_check(q, shared, context, out)
    return row


def cuda_graph_check(q: torch.Tensor, cache, context: int, expected: torch.Tensor) -> dict:
    """Capture the decode launch (both kernels, the split buffers' allocation included) and replay it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up: compile before capture
            paged_decode_attention(q, *cache, max_context=context)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, *cache, max_context=context)
    graph.replay()
    torch.cuda.synchronize()
    same = bool(torch.equal(out, expected))
    return {"graph_captured": True, "graph_output_equal": same, "graph_replay_ms": timed_ms(graph.replay, q.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--contexts", default="2048,4096")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    args = parser.parse_args()
    console = Console()
    doc: dict = {"command": " ".join(["python bench/kernels.py", *sys.argv[1:]])}
    if not torch.cuda.is_available() and not args.smoke:
        doc |= {"device": "no GPU", "results": []}
        _write(doc)
        console.print("[yellow]no GPU[/]: the kernel benchmark needs CUDA (run with --smoke to check the script)")
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter, smoke)"
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    batches = (2, 3) if args.smoke else tuple(int(b) for b in args.batches.split(","))
    contexts = (24, 40) if args.smoke else tuple(int(c) for c in args.contexts.split(","))
    dtype = torch.float16 if args.smoke else torch.bfloat16
    peak = hbm_peak_gbps(name) if device.type == "cuda" else None
    rows = [bench_point(b, c, shapes, dtype, device) for b in batches for c in contexts]
    for r in rows:
        r["paged_share_of_peak"] = r["paged_gbps"] / peak if peak else None
    doc |= {"device": name, "hbm_peak_gbps": peak, "shapes": shapes, "dtype": str(dtype), "results": rows,
            "targets": {"paged_share_of_peak_min": 0.80, "shared_over_static_max": 1.02}}
    _write(doc)
    console.print(_table(doc))


def _write(doc: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernels.json").write_text(json.dumps(doc, indent=2))


def _table(doc: dict) -> Table:
    t = Table(title=f"Paged decode attention on {doc['device']}", title_justify="left")
    for col in ("batch", "context", "paged GB/s", "% HBM peak", "dense SDPA GB/s", "shared ÷ static", "graph",
                "max err"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in doc["results"]:
        share = r["paged_share_of_peak"]
        graph = "-" if "graph_output_equal" not in r else ("[green]ok[/]" if r["graph_output_equal"] else "[red]differs[/]")
        t.add_row(str(r["batch"]), str(r["context"]), f"{r['paged_gbps']:,.0f}",
                  "-" if share is None else f"{share:.0%}", f"{r['dense_sdpa_gbps']:,.0f}",
                  f"{r['shared_over_static']:.3f}", graph, f"{r['max_abs_err_vs_ref']:.2e}")
    return t


if __name__ == "__main__":
    main()

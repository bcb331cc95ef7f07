"""`fleetwise worker` (serve one device's engine over HTTP) and `fleetwise profile` (fit its latency model).

torch, FastAPI and uvicorn are imported inside the commands so that `fleetwise --help` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from controller.console import out, print_json
from core.catalog import MODEL_CATALOG
from core.errors import InputError
from core.latency import load_profiles, save_profiles

if TYPE_CHECKING:
    from workers.engine import Engine

ModelOpt = Annotated[list[str], typer.Option(
    "--model", "-m", help="A model to serve: ARCH (a catalog architecture) or NAME=ARCH. Repeat for several.")]
WeightsOpt = Annotated[list[str] | None, typer.Option(
    "--weights", help="NAME=DIR: load NAME's weights from the *.safetensors in DIR (default: random from --seed).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of random weights (each model adds its position).")]
DeviceOpt = Annotated[str, typer.Option(help="torch device: auto (cuda if present), cpu, cuda, cuda:N.")]
GpuTypeOpt = Annotated[str, typer.Option(help="GPU type reported in status and profiles (auto: from the device).")]
KvPagesOpt = Annotated[int, typer.Option(help="Pages of the shared KV pool.", min=1)]
PageKibOpt = Annotated[int, typer.Option(help="KV page size in KiB.", min=4)]
MemoryOpt = Annotated[float, typer.Option(help="Device memory for weights + KV, GiB.", min=0.01, max=65536)]
WorkerIdOpt = Annotated[str, typer.Option(help="This GPU's id in the fleet, <pool>/<index>.")]
ThreadsOpt = Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).", min=0)]


def worker(
    model: ModelOpt,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).", min=0, max=65535)] = 8100,
    worker_id: WorkerIdOpt = "local/0",
    device: DeviceOpt = "auto",
    gpu_type: GpuTypeOpt = "auto",
    memory_gib: MemoryOpt = 4.0,
    kv_pages: KvPagesOpt = 64,
    page_kib: PageKibOpt = 256,
    host_kv_gib: Annotated[float, typer.Option(help="Host memory for swapped/checkpointed KV, GiB.", min=0)] = 0.25,
    activate: Annotated[bool, typer.Option(help="Load every model onto the device at start.")] = True,
    threads: ThreadsOpt = 0,
    profile: Annotated[Path | None, typer.Option(
        help="Latency profile YAML (`fleetwise profile`) of this device: offline requests then run only in the time "
             "the online requests' TPOT targets leave.")] = None,
) -> None:
    """Serve one device: the control API (WorkerClient), OpenAI /v1/completions and Prometheus /metrics."""
    from workers.agent import create_app, serve_in_thread
    from workers.control import LocalWorkerClient

    engine = _engine(model, weights, seed, worker_id, device, gpu_type, memory_gib, kv_pages, page_kib,
                     host_kv_gib, threads, profile)
    if activate:
        for name in engine.store.names:
            timing = engine.activate(name)
            out.print(f"activated [bold]{name}[/] in {timing.total_s:.3f} s")
    client = LocalWorkerClient(engine)
    agent = serve_in_thread(create_app(client), host=host, port=port)
    out.print(f"worker [bold]{worker_id}[/] ({engine.config.gpu_type}, {engine.device}) serving "
              f"{', '.join(engine.store.names)}")
    out.print(f"LISTENING {agent.url}", highlight=False, soft_wrap=True)
    try:
        while agent.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
        client.close()


def profile(
    model: ModelOpt,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Profile YAML to write.")] = Path("profiles.yaml"),
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,4,16,32",
    prompts: Annotated[str, typer.Option(help="Prompt lengths in tokens, comma-separated.")] = "16,64,256",
    output_tokens: Annotated[int, typer.Option(help="Tokens generated per request.", min=2)] = 24,
    repeats: Annotated[int, typer.Option(help="Times the grid is run.", min=1)] = 1,
    served_requests: Annotated[int, typer.Option(
        help="Requests of the served phase (synthetic Poisson traffic through the serving loop, fitted with the "
             "grid); 0 skips it.", min=0)] = 48,
    worker_id: WorkerIdOpt = "local/0",
    device: DeviceOpt = "auto",
    gpu_type: GpuTypeOpt = "auto",
    memory_gib: MemoryOpt = 4.0,
    kv_pages: KvPagesOpt = 128,
    page_kib: PageKibOpt = 256,
    threads: ThreadsOpt = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")] = False,
) -> None:
    """Measure this worker over a grid of batches and under served traffic, fit the latency model by non-negative
    least squares, and write a profile YAML with its error on held-out iterations."""
    from dataclasses import asdict

    from controller.outputs import check_output

    check_output("--out", out_path)  # before minutes of profiling, not after
    batch_sizes, prompt_lens = _ints("--batches", batches), _ints("--prompts", prompts)
    if max(batch_sizes) > kv_pages:
        raise InputError("--batches", batches, f"batch sizes ≤ --kv-pages ({kv_pages}): every request of a batch "
                         "holds at least one KV page")
    engine = _engine(model, weights, seed, worker_id, device, gpu_type, memory_gib, kv_pages, page_kib, 0.25,
                     threads)
    from workers.profile import ProfileGrid, ServedLoad, profile_model

    grid = ProfileGrid(batch_sizes, prompt_lens, output_tokens, repeats)
    longest = max(sum(pair) for b in grid.batch_sizes for p in grid.prompt_tokens for pair in grid.lengths(b, p))
    # the served phase's longest request: the longest prompt and twice the output (`workers.profile.measure_served`)
    served_longest = max(grid.prompt_tokens) + 2 * grid.output_tokens if served_requests else 0
    for name in engine.store.names:
        limit = engine.store.source(name).arch.max_context_tokens
        if longest > limit:
            raise InputError("--prompts", max(grid.prompt_tokens), f"prompt + output tokens within {limit} ({name})")
        if served_longest > limit:
            raise InputError("--output-tokens", grid.output_tokens,
                             f"the served phase's longest prompt + 2 × output tokens within {limit} ({name}); "
                             "or --served-requests 0")
    results = []
    with Progress(console=out, transient=True, disable=json_out) as bar:
        for name in engine.store.names:
            task = bar.add_task(f"profiling {name}", total=len(grid.points))
            results.append(profile_model(engine, name, grid, seed=seed, served=ServedLoad(served_requests),
                                         progress=lambda i, n, task=task: bar.update(task, completed=i)))
    save_profiles(out_path, results, meta={"worker_id": worker_id, "device": str(engine.device),
                                           "grid": asdict(grid), "served": asdict(ServedLoad(served_requests)),
                                           "command": "fleetwise profile"})
    if json_out:
        print_json([asdict(r) for r in results])
        return
    out.print(_profile_table(results))
    out.print(f"wrote {out_path}")


def _engine(models: list[str], weights: list[str] | None, seed: int, worker_id: str, device: str, gpu_type: str,
            memory_gib: float, kv_pages: int, page_kib: int, host_kv_gib: float, threads: int,
            profile: Path | None = None) -> Engine:
    specs = _model_specs(models, weights or [])  # bad options fail here, before torch is imported
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise InputError("--device", device, "auto, cpu, cuda or cuda:N")
    profiles = load_profiles(profile) if profile is not None else None
    import torch

    from workers.engine import Engine, EngineConfig
    from workers.residency import ModelSource

    if threads:
        torch.set_num_threads(threads)
    dev = _device(device)
    sources = [ModelSource(name, MODEL_CATALOG[arch], seed=seed + i, weights_dir=d)
               for i, (name, arch, d) in enumerate(specs)]
    config = EngineConfig(worker_id=worker_id, pool=worker_id.split("/")[0], gpu_type=_gpu_type(gpu_type, dev),
                          device=dev, memory_gib=memory_gib, kv_pages=kv_pages, page_bytes=page_kib * 1024,
                          host_kv_gib=host_kv_gib)
    if profiles is not None and not any((arch, config.gpu_type, 1) in profiles for _, arch, _ in specs):
        raise InputError("--profile", str(profile), f"profiles on {config.gpu_type} at TP 1 of a served model's "
                         f"architecture ({', '.join(sorted({a for _, a, _ in specs}))}); it has "
                         f"{', '.join(sorted(f'{a} on {g} at TP {t}' for a, g, t in profiles)) or 'none'}")
    return Engine(config, sources, profiles=profiles)


def _model_specs(models: list[str], weights: list[str]) -> list[tuple[str, str, Path | None]]:
    """(name, catalog architecture, weights directory) of each --model, checked against --weights."""
    dirs = dict(_pair("--weights", w) for w in weights)
    specs = []
    for spec in models:
        name, arch = _pair("--model", spec) if "=" in spec else (spec, spec)
        if arch not in MODEL_CATALOG:
            raise InputError("--model", spec, f"ARCH or NAME=ARCH with ARCH one of {', '.join(MODEL_CATALOG)}")
        directory = dirs.pop(name, None)
        if directory is not None and not Path(directory).is_dir():
            raise InputError("--weights", f"{name}={directory}", "NAME=DIR with DIR an existing directory")
        specs.append((name, arch, Path(directory) if directory else None))
    if dirs:
        raise InputError("--weights", ", ".join(dirs), "NAME=DIR for a NAME given with --model")
    return specs


def _pair(option: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise InputError(option, text, "NAME=VALUE")
    return name, value


def _ints(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise InputError(option, text, "positive integers separated by commas, e.g. 1,4,16")
    return values


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", device, "cpu or auto: this machine has no CUDA device")
    return device


def _gpu_type(gpu_type: str, device: str) -> str:
    """Catalog name of the device's GPU when recognised (H100 → H100-SXM …), else the device's own name."""
    if gpu_type != "auto":
        return gpu_type
    if device == "cpu":
        return "CPU"
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    memory_gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 1024**3
    for key, catalog in (("H200", "H200"), ("H100", "H100-SXM"), ("A10G", "A10"), ("A10", "A10"), ("L4", "L4")):
        if key in name:
            return catalog
    if "A100" in name:
        return "A100-80GB" if memory_gib > 50 else "A100-40GB"
    return name


def _profile_table(results: list) -> Table:
    t = Table(title="Latency profile (fitted)", title_justify="left")
    for col in ("model", "GPU", "c0 ms", "prefill µs/tok", "attn ns/tok²", "decode µs/seq", "kv ns/tok",
                "intake ms", "MAPE", "p90 err", "held out"):
        t.add_column(col, justify="left" if col in ("model", "GPU") else "right")
    for r in results:
        e = r.fit_error
        t.add_row(r.arch, r.gpu_type, f"{r.c0_s * 1e3:.3f}", f"{r.c_prefill_s * 1e6:.2f}", f"{r.c_attn_s * 1e9:.3f}",
                  f"{r.c_decode_s * 1e6:.2f}", f"{r.c_kv_s * 1e9:.2f}", f"{r.admit_s * 1e3:.2f}", f"{e.mape:.1%}",
                  f"{e.p90_abs_rel_error:.1%}",
                  str(e.num_heldout))
    return t


def notices(
    provider: Annotated[str, typer.Option(help="The cloud whose metadata service announces interruptions: aws, gcp or "
                                                "azure.")],
    controller: Annotated[str, typer.Option(help="The controller's URL.")],
    fleet: Annotated[str, typer.Option(help="The fleet this VM's GPUs belong to.")],
    worker_id: Annotated[list[str], typer.Option(help="A GPU of this VM, <pool>/<index>; repeat for each.")],
    token_env: Annotated[str, typer.Option(help="Environment variable holding a token of scope plan.")] =
    "FLEETWISE_TOKEN",
    metadata_url: Annotated[str | None, typer.Option(
        help="The metadata service (default: the provider's link-local address).")] = None,
    vm_name: Annotated[str | None, typer.Option(help="Azure: this VM's name among a scheduled event's Resources "
                                                     "(default: every event is this VM's).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls (AWS advises 5).", min=0.5,
                                            max=300)] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="Poll once, forward what it finds, and exit.")] = False,
) -> None:
    """Watch this VM's metadata service for a preemption notice and forward it to the controller for each of the VM's
    GPUs; the controller replans at once (POST /v1/fleets/{fleet}/preemption-notices). Run one per VM."""
    import os

    from workers.notices import PROVIDERS, NoticeWatcher

    if provider not in PROVIDERS:
        raise InputError("--provider", provider, ", ".join(PROVIDERS))
    token = os.environ.get(token_env, "")
    if not token:
        raise InputError(f"--token-env {token_env}", None, "the name of a set environment variable holding a token",
                         problem=f"environment variable {token_env} is not set")
    watcher = NoticeWatcher(provider, controller, fleet, tuple(worker_id), token, metadata_url=metadata_url,
                            vm_name=vm_name)
    seen = 0
    try:
        while True:
            notice = watcher.poll()
            for n in watcher.sent[seen:]:
                out.print(f"forwarded {n.detail} for {', '.join(worker_id)} to {controller}", highlight=False)
            seen = len(watcher.sent)
            for error in watcher.errors:
                out.print(f"[yellow]{error}[/]", highlight=False)
            watcher.errors.clear()
            if once:
                if notice is None:
                    out.print(f"no interruption announced ({provider})", highlight=False)
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()

"""Where each model's weights are: on the device (active), in host memory (warm) or nowhere (cold).

A cold model is re-created on demand — from its seed, or from the safetensors in its `weights_dir` — into host
memory (pinned when CUDA is present, so the host→device copy runs at full link speed); activation then copies the
host weights to the device. Both stages are timed and reported (`ActivationTiming`), which is what the latency
model's `disk_to_host_s` and `host_to_gpu_s` stand for. The host copy is kept while the model is active, so a
deactivation to host frees device memory at once and the next activation skips the load. On a CPU-only worker "device" and "host" are both RAM and
the host→device stage is a real copy between two buffers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.actions import Residency
from core.catalog import ModelArch, llama_param_count
from core.errors import InputError
from workers.model import LlamaModel, LlamaWeights, load_safetensors, random_weights, torch_dtype
from workers.tokenizer import ByteTokenizer

BYTE_VOCAB = ByteTokenizer().vocab_size


@dataclass(frozen=True)
class ModelSource:
    """A model this worker can serve: its served name, architecture and where its weights come from."""

    name: str  # served model name (the fleet's ModelSpec name)
    arch: ModelArch
    seed: int = 0  # random weights from this seed when weights_dir is None
    weights_dir: Path | None = None  # a directory of *.safetensors (Hugging Face Llama names)

    @property
    def eos_token_id(self) -> int | None:
        """EOS of the byte-level tokenizer for byte-vocabulary models; None (never stop early) otherwise."""
        return ByteTokenizer().eos_id if self.arch.vocab_size == BYTE_VOCAB else None


@dataclass(frozen=True)
class ActivationTiming:
    """How long one activation took, by stage."""

    model: str
    from_residency: Residency  # where the weights were before
    disk_to_host_s: float  # creating / reading the weights into host memory (0 when they were there)
    host_to_device_s: float  # copying them onto the device
    weight_bytes: int

    @property
    def total_s(self) -> float:
        return self.disk_to_host_s + self.host_to_device_s


@dataclass(eq=False)
class _Slot:
    source: ModelSource
    residency: Residency = Residency.COLD
    host: LlamaWeights | None = None
    model: LlamaModel | None = None  # the device copy while active
    last_activation: ActivationTiming | None = field(default=None)


class ModelStore:
    """The weights of every model this worker knows, and their residency. Not thread-safe: the engine locks."""

    def __init__(self, sources: list[ModelSource], device: torch.device) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise InputError("models", names, "distinct model names")
        self.device = device
        self._slots = {s.name: _Slot(s) for s in sources}

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def knows(self, name: str) -> bool:
        return name in self._slots

    def source(self, name: str) -> ModelSource:
        return self._slot(name).source

    def residency(self, name: str) -> Residency:
        return self._slot(name).residency

    def model(self, name: str) -> LlamaModel:
        """The active model (raises if it is not on the device)."""
        slot = self._slot(name)
        if slot.model is None:
            raise RuntimeError(f"model {name!r} is not active")
        return slot.model

    def last_activation(self, name: str) -> ActivationTiming | None:
        return self._slot(name).last_activation

    def weight_bytes(self, name: str) -> int:
        """Bytes of the model's weights (from the architecture: known before they are loaded)."""
        arch = self._slot(name).source.arch
        return llama_param_count(arch) * torch.empty((), dtype=torch_dtype(arch)).element_size()

    @property
    def active_weight_bytes(self) -> int:
        return sum(s.model.weights.nbytes for s in self._slots.values() if s.model is not None)

    def activate(self, name: str) -> ActivationTiming:
        """Bring the model onto the device (from host, or from cold through host); returns the timing."""
        slot = self._slot(name)
        before = slot.residency
        if before is Residency.ACTIVE:
            assert slot.model is not None
            return ActivationTiming(name, before, 0.0, 0.0, slot.model.weights.nbytes)
        load_s = 0.0
        if slot.host is None:
            t0 = time.perf_counter()
            slot.host = self._load_host(slot.source)
            load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        device_weights = _copy_to(slot.host, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        copy_s = time.perf_counter() - t1
        slot.model = LlamaModel(device_weights)
        slot.residency = Residency.ACTIVE
        slot.last_activation = ActivationTiming(name, before, load_s, copy_s, device_weights.nbytes)
        return slot.last_activation

    def deactivate(self, name: str, to: Residency) -> None:
        """Drop the device copy; keep the host copy (`to=host`) or drop it too (`to=cold`)."""
        if to is Residency.ACTIVE:
            raise InputError("to", to.value, "host or cold")
        slot = self._slot(name)
        slot.model = None
        if to is Residency.COLD:
            slot.host = None
        elif slot.host is None:
            slot.host = self._load_host(slot.source)
        slot.residency = to
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load_host(self, source: ModelSource) -> LlamaWeights:
        if source.weights_dir is not None:
            weights = load_safetensors(source.arch, source.weights_dir)
        else:
            weights = random_weights(source.arch, source.seed)
        return weights.to("cpu", pin_memory=self.device.type == "cuda")

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise InputError("model", name, f"a model this worker serves: {', '.join(self._slots) or 'none'}") from None


def _copy_to(weights: LlamaWeights, device: torch.device) -> LlamaWeights:
    """A copy on `device` that never aliases the host copy (on a CPU device too)."""
    if device.type == "cpu":
        return weights.map(torch.clone)
    return weights.to(device)

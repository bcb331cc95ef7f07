"""ModelRunner: one model's forward pass over the paged KV cache, and sampling.

The engine hands it a list of `SeqWork` (which tokens of which sequence to compute this iteration, and where their
KV goes); it builds the flat token stream (decode tokens first, then prefill chunks), the `AttentionBatch`, runs
`LlamaModel.forward` with the paged attention backend and samples one token for every sequence that asked.

Sampling is greedy at temperature 0; otherwise it draws from softmax(logits / T) with a generator seeded by
(request seed, position), so a sequence's output does not depend on what it was batched with or on whether it was
preempted and resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from workers.attention import AttentionBackend, AttentionBatch, default_backend
from workers.handles import GREEDY, SamplingParams, TokenLogprob
from workers.kernels.layout import PagedKVLayout, kv_views
from workers.model import LlamaModel


@dataclass(frozen=True, slots=True)
class SeqWork:
    """One sequence's share of a forward pass."""

    seq_id: int
    token_ids: tuple[int, ...]  # tokens whose KV this pass computes (decode: the last sampled token)
    start_pos: int  # position of token_ids[0]
    block_ids: Sequence[int]  # block table covering start_pos + len(token_ids) tokens
    sample: bool  # sample the next token after token_ids[-1]
    params: SamplingParams = GREEDY  # temperature, penalties, biases, logprobs
    seed: int = 0  # this sequence's sampling seed (temperature > 0)
    generated: tuple[int, ...] = ()  # the output so far, when a penalty reads it

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


class ModelRunner:
    """Runs one resident model over its KV views of the device's shared page buffer."""

    def __init__(self, model: LlamaModel, kv_buffer: torch.Tensor, layout: PagedKVLayout,
                 backend: AttentionBackend | None = None) -> None:
        self.model = model
        self.layout = layout
        self.k_cache, self.v_cache = kv_views(kv_buffer, layout)
        self.backend = backend or default_backend(model.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def run(self, work: Sequence[SeqWork]) -> dict[int, int]:
        """Compute KV for every `work` item and sample where asked; returns {seq_id: next token}. The
        log-probabilities of the items that asked for them are in `last_logprobs` until the next run."""
        self.last_logprobs: dict[int, TokenLogprob] = {}
        if not work:
            return {}
        ordered = [w for w in work if len(w.token_ids) == 1] + [w for w in work if len(w.token_ids) > 1]
        inputs = _Inputs(ordered, self.layout.block_size)
        batch = inputs.attention_batch(self.device)
        state = self.backend.prepare(batch, self.layout, self.k_cache, self.v_cache)
        hidden = self.model.forward(inputs.tensor(inputs.tokens, self.device),
                                    inputs.tensor(inputs.positions, self.device),
                                    lambda layer, q, k, v: self.backend.attend(state, layer, q, k, v))
        sampled = [i for i, w in enumerate(ordered) if w.sample]
        if not sampled:
            return {}
        last_rows = inputs.tensor(inputs.cu[1:][sampled] - 1, self.device)
        picked = [ordered[i] for i in sampled]
        logits = self.model.logits(hidden[last_rows])
        tokens = sample_tokens(logits, picked)
        self.last_logprobs = token_logprobs(logits, picked, tokens)
        return dict(zip((w.seq_id for w in picked), tokens, strict=True))


class _Inputs:
    """The flat token stream of one pass, built with numpy on the host (decode items first, then prefill)."""

    def __init__(self, ordered: list[SeqWork], block_size: int) -> None:
        n = len(ordered)
        lens, starts, num_blocks = np.array([(len(w.token_ids), w.start_pos, len(w.block_ids)) for w in ordered],
                                            np.int64).reshape(n, 3).T
        self.num_decode = int(np.count_nonzero(lens == 1))
        self.lens, self.ends = lens, starts + lens
        self.cu = np.concatenate([[0], np.cumsum(lens)])
        # Padding is block 0, a valid id: padded entries are masked, never trusted.
        self.table = np.zeros((n, int(num_blocks.max())), np.int32)
        self.table[np.arange(self.table.shape[1])[None, :] < num_blocks[:, None]] = np.fromiter(
            chain.from_iterable(w.block_ids for w in ordered), np.int32, int(num_blocks.sum()))
        self.tokens = np.fromiter(chain.from_iterable(w.token_ids for w in ordered), np.int64, int(self.cu[-1]))
        seq_index = np.repeat(np.arange(n), lens)
        self.positions = np.arange(self.cu[-1]) - np.repeat(self.cu[:-1] - starts, lens)
        blocks = self.table[seq_index, self.positions // block_size].astype(np.int64)
        self.slots = blocks * block_size + self.positions % block_size

    @staticmethod
    def tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def attention_batch(self, device: torch.device) -> AttentionBatch:
        return AttentionBatch(device, self.num_decode, self.slots, self.table, self.ends.astype(np.int32), self.lens)


def sample_tokens(logits: torch.Tensor, work: Sequence[SeqWork]) -> list[int]:
    """One token per row of `logits` [M, vocab]: argmax at temperature 0, else a seeded draw; penalties and biases
    (OpenAI's) adjust a row's logits first."""
    tokens = logits.argmax(-1).tolist()
    for i, w in enumerate(work):
        temperature, shaped = w.params.temperature, w.params.shapes_logits
        if temperature <= 0 and not shaped:
            continue
        row = logits[i].double()
        if shaped:
            row = _shape(row, w)
        if temperature <= 0:
            tokens[i] = int(row.argmax())
            continue
        # Over a tiny temperature (1e-320 is valid input) logits overflow to inf and softmax gives NaN, which
        # killed the engine thread. Shifted to a maximum of 0 they only underflow (to -inf: probability 0), and
        # in float64 every positive temperature stays non-zero: the draw tends to greedy as it tends to 0.
        probs = torch.softmax((row - row.max()) / temperature, dim=-1).cpu()
        gen = torch.Generator().manual_seed(hash((w.seed, w.end_pos)) & 0x7FFF_FFFF_FFFF_FFFF)
        tokens[i] = int(torch.multinomial(probs, 1, generator=gen))
    return tokens


def token_logprobs(logits: torch.Tensor, work: Sequence[SeqWork], tokens: list[int]) -> dict[int, TokenLogprob]:
    """For the rows whose work asks (`logprobs` set): the sampled token's log-probability under the model
    (log-softmax of its logits, in float32) and the `logprobs` likeliest tokens, by seq_id."""
    rows = [i for i, w in enumerate(work) if w.params.logprobs is not None]
    if not rows:
        return {}
    lp = torch.log_softmax(logits[rows].float(), dim=-1)
    k = max(work[i].params.logprobs or 0 for i in rows)
    chosen = lp.gather(1, torch.tensor([tokens[i] for i in rows], device=lp.device)[:, None])[:, 0].tolist()
    if k:
        best = lp.topk(k, dim=-1)
        top_lp, top_ids = best.values.tolist(), best.indices.tolist()
    else:
        top_lp = top_ids = [[] for _ in rows]
    out = {}
    for j, i in enumerate(rows):
        n = work[i].params.logprobs or 0
        out[work[i].seq_id] = TokenLogprob(tokens[i], chosen[j], tuple(zip(top_ids[j][:n], top_lp[j][:n], strict=True)))
    return out


def _shape(row: torch.Tensor, w: SeqWork) -> torch.Tensor:
    """`row` less OpenAI's penalties on the tokens generated so far, plus the request's logit biases."""
    row, p = row.clone(), w.params
    vocab = row.shape[0]
    if w.generated and p.penalized:
        counts = torch.bincount(torch.tensor(w.generated, device=row.device), minlength=vocab)[:vocab].double()
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).double()
    kept = [(t, b) for t, b in p.logit_bias if t < vocab]  # ids are checked against the model's vocabulary upstream
    if kept:
        ids, bias = zip(*kept, strict=True)
        row[torch.tensor(ids, device=row.device)] += torch.tensor(bias, device=row.device, dtype=row.dtype)
    return row

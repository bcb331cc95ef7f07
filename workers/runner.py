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
    # Prompt tokens to score (prompt log-probabilities): rows 0, 1, … of this chunk predict scored[0], scored[1], …
    scored: tuple[int, ...] = ()

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
        """Compute KV for every `work` item and sample where asked; returns {seq_id: next token}. Until the next run,
        `last_logprobs` holds the sampled tokens' log-probabilities of the items that asked for them, and
        `last_prompt_logprobs` the scored prompt tokens' ({seq_id: (position of the first, entries)})."""
        self.last_logprobs: dict[int, TokenLogprob] = {}
        self.last_prompt_logprobs: dict[int, tuple[int, list[TokenLogprob]]] = {}
        if not work:
            return {}
        ordered = [w for w in work if len(w.token_ids) == 1] + [w for w in work if len(w.token_ids) > 1]
        inputs = _Inputs(ordered, self.layout.block_size)
        batch = inputs.attention_batch(self.device)
        state = self.backend.prepare(batch, self.layout, self.k_cache, self.v_cache)
        hidden = self.model.forward(inputs.tensor(inputs.tokens, self.device),
                                    inputs.tensor(inputs.positions, self.device),
                                    lambda layer, q, k, v: self.backend.attend(state, layer, q, k, v))
        for i, w in enumerate(ordered):
            if w.scored:
                rows = hidden[int(inputs.cu[i]) : int(inputs.cu[i]) + len(w.scored)]
                self.last_prompt_logprobs[w.seq_id] = (w.start_pos + 1, prompt_logprobs(self.model, rows, w))
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
    """For the rows whose work asks (`logprobs` set): the sampled token's log-probability under the model and the
    `logprobs` likeliest tokens, by seq_id."""
    rows = [i for i, w in enumerate(work) if w.params.logprobs is not None]
    if not rows:
        return {}
    entries = logprob_entries(logits[rows], [tokens[i] for i in rows], [work[i].params.logprobs or 0 for i in rows])
    return {work[i].seq_id: entry for i, entry in zip(rows, entries, strict=True)}


PROMPT_LOGIT_ROWS = 256  # prompt rows turned into logits at a time: rows × vocabulary floats stay bounded


def prompt_logprobs(model: LlamaModel, hidden: torch.Tensor, w: SeqWork) -> list[TokenLogprob]:
    """The log-probabilities of `w.scored` (the prompt tokens after each row of `hidden`, this chunk's hidden states)
    and of the `prompt_logprobs` likeliest tokens at each, in slices of `PROMPT_LOGIT_ROWS`."""
    k = w.params.prompt_logprobs or 0
    out: list[TokenLogprob] = []
    for lo in range(0, len(w.scored), PROMPT_LOGIT_ROWS):
        targets = w.scored[lo : lo + PROMPT_LOGIT_ROWS]
        out += logprob_entries(model.logits(hidden[lo : lo + len(targets)]), list(targets), [k] * len(targets))
    return out


def logprob_entries(logits: torch.Tensor, targets: list[int], alternatives: list[int]) -> list[TokenLogprob]:
    """Per row of `logits` [M, vocab]: the log-probability of its target under the model (log-softmax of the
    logits, in float32) and its `alternatives` likeliest tokens."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(targets, device=lp.device)[:, None])[:, 0].tolist()
    k = max(alternatives, default=0)
    if k:
        best = lp.topk(k, dim=-1)
        top_lp, top_ids = best.values.tolist(), best.indices.tolist()
    else:
        top_lp = top_ids = [[] for _ in targets]
    return [TokenLogprob(t, c, tuple(zip(ids[:n], vals[:n], strict=True)))
            for t, c, ids, vals, n in zip(targets, chosen, top_ids, top_lp, alternatives, strict=True)]


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

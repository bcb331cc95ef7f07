"""Conditional output-length model in torch: P(output tokens | what is known when a request arrives).

In the spirit of SSJF's proxy model (Qiu et al., arXiv 2404.08509), which predicts output-length *percentile
buckets* from the prompt: a small MLP classifies each request into percentile buckets of the training outputs
from its prompt tokens (log-scaled), model, SLO class and — when the trace carries it — hashed words of the prompt
text. Within a bucket, lengths follow the training outputs that fell in it, so every request gets a full
distribution over token counts (`forecasters.lengths.LengthBatch`), not just a point: the queue planner needs
means, variances and tails of remaining work.

Calibration uses the chronologically last `calibration_share` of the training table: temperature scaling of the
softmax (Guo et al., ICML'17), then recalibration of the predicted CDFs by the empirical distribution of their
PIT values (Kuleshov et al., ICML'18), so that predicted quantiles hold their coverage on later requests.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from core.requests import RequestTable
from forecasters.lengths import LengthBatch


@dataclass(frozen=True)
class LengthModelConfig:
    num_buckets: int = 24  # percentile buckets of the training outputs (fewer when outputs repeat)
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    text_dims: int = 128  # hashed word features when prompts carry text
    calibration_share: float = 0.2  # chronologically last share of the table, for temperature scaling
    seed: int = 0


@dataclass(frozen=True, eq=False)
class _Encoder:
    """Features known at arrival, standardised with training statistics."""

    models: tuple[str, ...]
    classes: tuple[str, ...]
    log_prompt_mean: float
    log_prompt_std: float
    text_dims: int  # 0 when the training table had no prompt text

    def encode(self, model: Sequence[str], slo_class: Sequence[str], prompt_tokens: np.ndarray,
               prompt_text: Sequence[str | None] | None) -> np.ndarray:
        z = (np.log1p(np.asarray(prompt_tokens, dtype=np.float64)) - self.log_prompt_mean) / self.log_prompt_std
        m_pos = {m: i for i, m in enumerate(self.models)}
        c_pos = {c: i for i, c in enumerate(self.classes)}
        n = z.size
        onehot_m = np.zeros((n, len(self.models)))
        onehot_c = np.zeros((n, len(self.classes)))
        for i, (m, c) in enumerate(zip(model, slo_class)):
            if m in m_pos:  # unseen models and classes get no indicator: the model falls back to the prompt alone
                onehot_m[i, m_pos[m]] = 1.0
            if c in c_pos:
                onehot_c[i, c_pos[c]] = 1.0
        parts = [z[:, None], z[:, None] ** 2, onehot_m, onehot_c]
        if self.text_dims:
            parts.append(_hash_words(prompt_text, n, self.text_dims))
        return np.concatenate(parts, axis=1).astype(np.float32)


@contextmanager
def _single_thread() -> Iterator[None]:
    """The network is tiny: intra-op threads only contend (15× slower training measured on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _hash_words(texts: Sequence[str | None] | None, n: int, dims: int) -> np.ndarray:
    """Bag of words hashed into `dims` buckets (crc32, stable across runs), L2-normalised per request."""
    out = np.zeros((n, dims))
    for i, text in enumerate(texts or [None] * n):
        for word in (text or "").lower().split():
            out[i, zlib.crc32(word.encode()) % dims] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=out, where=norms > 0)


class OutputLengthModel:
    """Per-request output-length distributions from features known at arrival. `fit` then `predict`."""

    def __init__(self, config: LengthModelConfig = LengthModelConfig()) -> None:
        self.config = config
        self.temperature = 1.0
        self._net = None
        self._encoder: _Encoder | None = None
        self._edges = np.zeros(0)  # bucket upper edges (inclusive)
        self._atoms = np.zeros(0)
        self._bucket_probs = np.zeros((0, 0))  # (K, A): lengths within each bucket
        self._pit = np.zeros(0)  # sorted calibration PITs (empty: no recalibration)

    # -- training ------------------------------------------------------------------------------------------------
    def fit(self, table: RequestTable) -> None:
        """Train on the older `1 - calibration_share` of `table` (by arrival); calibrate on the rest."""
        import torch

        n = len(table)
        if n < 50:
            raise ValueError(f"the length model needs at least 50 requests, got {n}")
        cut = int(n * (1.0 - self.config.calibration_share))
        train, calib = np.arange(cut), np.arange(cut, n)
        y = table.output_tokens.astype(np.float64)
        self._set_buckets(y[train])
        self._encoder = self._make_encoder(table, train)
        x = self._features(table)
        labels = self._bucket_of(y)
        torch.manual_seed(self.config.seed)
        self._net = self._build(x.shape[1])
        with _single_thread():
            self._train(torch.from_numpy(x[train]), torch.from_numpy(labels[train]))
            self.temperature = self._calibrate(x[calib], labels[calib]) if calib.size >= 20 else 1.0
        self._pit = np.zeros(0)
        if calib.size >= 20:
            self._pit = np.sort(_mid_pit(self._batch(x[calib]), y[calib]))

    def _set_buckets(self, y: np.ndarray) -> None:
        qs = np.linspace(0, 1, self.config.num_buckets + 1)[1:]
        self._edges = np.unique(np.quantile(y, qs, method="higher"))
        self._atoms, counts = np.unique(y, return_counts=True)
        bucket = np.searchsorted(self._edges, self._atoms, side="left")
        probs = np.zeros((self._edges.size, self._atoms.size))
        probs[bucket, np.arange(self._atoms.size)] = counts
        self._bucket_probs = probs / probs.sum(axis=1, keepdims=True)

    def _bucket_of(self, y: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self._edges, y, side="left"), self._edges.size - 1).astype(np.int64)

    def _make_encoder(self, table: RequestTable, rows: np.ndarray) -> _Encoder:
        logp = np.log1p(table.prompt_tokens[rows].astype(np.float64))
        has_text = table.prompt_text is not None and any(t for t in table.prompt_text)
        return _Encoder(table.model_names, table.slo_names, float(logp.mean()), float(logp.std() or 1.0),
                        self.config.text_dims if has_text else 0)

    def _features(self, table: RequestTable) -> np.ndarray:
        assert self._encoder is not None
        models = np.asarray(table.model_names, dtype=object)[table.model_idx] if len(table) else []
        classes = np.asarray(table.slo_names, dtype=object)[table.slo_idx] if len(table) else []
        return self._encoder.encode(list(models), list(classes), table.prompt_tokens, table.prompt_text)

    def _build(self, num_features: int):
        import torch

        h = self.config.hidden
        return torch.nn.Sequential(
            torch.nn.Linear(num_features, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
            torch.nn.Linear(h, self._edges.size),
        )

    def _train(self, x, labels) -> None:
        import torch

        cfg = self.config
        opt = torch.optim.AdamW(self._net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        loss_fn = torch.nn.CrossEntropyLoss()
        self._net.train()
        for _ in range(cfg.epochs):
            for idx in torch.randperm(x.shape[0], generator=gen).split(cfg.batch_size):
                opt.zero_grad()
                loss_fn(self._net(x[idx]), labels[idx]).backward()
                opt.step()
        self._net.eval()

    def _logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad(), _single_thread():
            return self._net(torch.from_numpy(x)).double().numpy()

    def _calibrate(self, x: np.ndarray, labels: np.ndarray) -> float:
        logits = self._logits(x)

        def nll(log_t: float) -> float:
            return -float(np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(labels.size), labels]))

        return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))

    # -- prediction ----------------------------------------------------------------------------------------------
    def predict(self, table: RequestTable) -> LengthBatch:
        """One output-length distribution per request of `table` (its `output_tokens` are not read)."""
        if self._net is None:
            raise RuntimeError("call fit() before predict()")
        return self._batch(self._features(table))

    def predict_for(self, model: str, slo_class: str, prompt_tokens: np.ndarray,
                    prompt_text: Sequence[str | None] | None = None) -> LengthBatch:
        """Distributions for requests of one (model, SLO class) with the given prompt lengths (and texts)."""
        if self._net is None or self._encoder is None:
            raise RuntimeError("call fit() before predict_for()")
        n = len(prompt_tokens)
        return self._batch(self._encoder.encode([model] * n, [slo_class] * n, np.asarray(prompt_tokens), prompt_text))

    def _batch(self, x: np.ndarray) -> LengthBatch:
        bucket = np.exp(log_softmax(self._logits(x) / self.temperature, axis=1))
        probs = bucket @ self._bucket_probs
        if self._pit.size:
            probs = _recalibrate(probs, self._pit)
        return LengthBatch(self._atoms.astype(np.float64), probs)


def _mid_pit(batch: LengthBatch, y: np.ndarray) -> np.ndarray:
    """Probability integral transform of discrete outcomes, at the middle of each outcome's CDF step."""
    below = batch.cdf(y - 0.5)
    return 0.5 * (below + batch.cdf(y))


def _recalibrate(probs: np.ndarray, pit: np.ndarray) -> np.ndarray:
    """Compose each CDF with the empirical CDF of calibration PITs (Kuleshov et al., ICML'18): where the model
    said "90 %" but 93 % of calibration outcomes fell below, the recalibrated CDF says 93 %."""
    levels = np.concatenate([[0.0], (np.arange(pit.size) + 0.5) / pit.size, [1.0]])
    knots = np.concatenate([[0.0], pit, [1.0]])
    cdf = np.interp(np.cumsum(probs, axis=1), knots, levels)
    cdf[:, -1] = 1.0
    return np.diff(cdf, axis=1, prepend=0.0)

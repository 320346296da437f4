"""Per-map top-k states: the ``k`` best ``(value, image index, position)`` of every feature map of a layer.

The order is total and exact: a larger value first, and among equal values the smaller global image
index first (an image appears at most once per map, so no two entries compare equal). Updating with a
batch and merging the states of several shards are the same selection over the union of the entries,
so any split of the data set (batches, resumed runs, ranks) gives the same state, bit for bit.

Example:
    >>> s, other = TopK(channels=2, k=2), TopK(channels=2, k=2)     # 2 maps, their top-2
    >>> s.update(torch.tensor([[1.0, 5.0], [3.0, 2.0]]), torch.tensor([[0, 4], [7, 1]]), torch.tensor([10, 11]))
    >>> other.update(torch.tensor([[4.0, 2.0]]), torch.tensor([[2, 2]]), torch.tensor([12]))  # another shard
    >>> merged = TopK.merge([s, other]); merged.indices.tolist(), merged.values.tolist()  # 2.0 tie: 11 first
    ([[12, 11], [10, 11]], [[4.0, 3.0], [5.0, 2.0]])
"""
from __future__ import annotations

import torch

__all__ = ["TopK", "select"]

_EMPTY = torch.iinfo(torch.int64).max


def select(values: torch.Tensor, indices: torch.Tensor, positions: torch.Tensor, k: int):
    """The ``k`` best entries of each row (value descending, then image index ascending; empty slots last).

    ``values`` float32 ``C x n``; ``indices`` int64 ``C x n`` (``-1`` = empty slot); ``positions`` int64 ``C x n``.
    """
    key = torch.where(indices < 0, torch.full_like(indices, _EMPTY), indices)
    o1 = torch.sort(key, dim=1, stable=True).indices                 # image index ascending
    v1 = values.gather(1, o1)
    o2 = torch.sort(v1, dim=1, descending=True, stable=True).indices  # then value descending (ties keep index order)
    order = o1.gather(1, o2)[:, :k]
    out = values.gather(1, order), indices.gather(1, order), positions.gather(1, order)
    if order.shape[1] < k:  # fewer entries than k: pad with empty slots
        pad = k - order.shape[1]
        C = values.shape[0]
        out = (torch.cat([out[0], torch.full((C, pad), float("-inf"))], 1),
               torch.cat([out[1], torch.full((C, pad), -1, dtype=torch.long)], 1),
               torch.cat([out[2], torch.full((C, pad), -1, dtype=torch.long)], 1))
    return out


class TopK:
    """The top-``k`` state of the ``channels`` maps of one layer (``values``, ``indices``, flat ``positions``)."""

    def __init__(self, channels: int, k: int, values=None, indices=None, positions=None):
        self.channels, self.k = int(channels), int(k)
        self.values = torch.full((channels, k), float("-inf")) if values is None else values
        self.indices = torch.full((channels, k), -1, dtype=torch.long) if indices is None else indices
        self.positions = torch.full((channels, k), -1, dtype=torch.long) if positions is None else positions
        for name, t, dtype in (("values", self.values, torch.float32), ("indices", self.indices, torch.int64),
                               ("positions", self.positions, torch.int64)):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != (self.channels, self.k):
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"top-k state {name}: expected {dtype} of shape {(self.channels, self.k)}, got {got}")
        self._pending, self.pending = [], 0     # offered entries not yet selected (see offer)
        self._threshold = None

    def threshold(self) -> torch.Tensor:
        """Per map the value a new entry must exceed to enter (its k-th value; ``-inf`` while not full), as of
        the last selection (entries offered since may have raised it: this bar is never too high)."""
        if self._threshold is None:
            self._threshold = torch.where(self.indices[:, -1] >= 0, self.values[:, -1],
                                          torch.full_like(self.values[:, -1], float("-inf")))
        return self._threshold

    def offer(self, values: torch.Tensor, positions: torch.Tensor, indices: torch.Tensor,
              channels: torch.Tensor) -> None:
        """Set entries aside for the next :meth:`settle`: 1-D ``values``, ``positions``, image ``indices`` and
        map ``channels``, one per entry (the miner offers only maxima above :meth:`threshold`). Selecting every
        few batches instead of after each one is the same selection over the same union of entries."""
        if values.numel():
            self._pending.append((values.float(), positions.long(), indices.long(), channels.long()))
            self.pending += values.numel()

    def settle(self) -> None:
        """Select the top ``k`` of each map from the state and the entries offered since the last call."""
        if not self._pending:
            return
        v, p, i, c = (torch.cat(t) for t in zip(*self._pending))
        self._pending, self.pending = [], 0
        C = self.channels
        counts = torch.bincount(c, minlength=C)
        order = torch.argsort(c, stable=True)
        c = c[order]
        slot = torch.arange(c.numel()) - (torch.cumsum(counts, 0) - counts)[c]   # rank of an entry in its map
        m = int(counts.max())
        V = torch.full((C, m), float("-inf"))
        I = torch.full((C, m), -1, dtype=torch.long)
        P = torch.full((C, m), -1, dtype=torch.long)
        V[c, slot], I[c, slot], P[c, slot] = v[order], i[order], p[order]
        self.values, self.indices, self.positions = select(torch.cat([self.values, V], 1),
                                                           torch.cat([self.indices, I], 1),
                                                           torch.cat([self.positions, P], 1), self.k)
        self._threshold = None

    def update(self, values: torch.Tensor, positions: torch.Tensor, indices: torch.Tensor) -> None:
        """Add one batch: ``values`` / ``positions`` ``B x C`` (each image's maximum per map and where), ``indices`` ``B``:
        every entry offered, then selected (:meth:`settle`)."""
        B, C = values.shape
        self.offer(values.reshape(-1), positions.reshape(-1), indices.repeat_interleave(C),
                   torch.arange(C).repeat(B))
        self.settle()

    @classmethod
    def merge(cls, states) -> "TopK":
        """One state from several (shards of a data set): the same selection over all their entries."""
        states = list(states)
        for s in states:
            s.settle()
        C, k = states[0].channels, states[0].k
        if any(s.channels != C or s.k != k for s in states):
            raise ValueError("cannot merge top-k states of different shapes")
        v, i, p = select(torch.cat([s.values for s in states], 1), torch.cat([s.indices for s in states], 1),
                         torch.cat([s.positions for s in states], 1), k)
        return cls(C, k, v, i, p)

    def tensors(self, prefix: str) -> dict:
        self.settle()
        return {f"{prefix}/values": self.values.contiguous(), f"{prefix}/indices": self.indices.contiguous(),
                f"{prefix}/positions": self.positions.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, channels: int, k: int) -> "TopK":
        try:
            return cls(channels, k, tensors[f"{prefix}/values"], tensors[f"{prefix}/indices"],
                       tensors[f"{prefix}/positions"])
        except KeyError as e:
            raise ValueError(f"top-k state of {prefix!r} is missing {e.args[0]!r}") from None

    def equal(self, other: "TopK") -> bool:
        self.settle()
        other.settle()
        return (torch.equal(self.values, other.values) and torch.equal(self.indices, other.indices)
                and torch.equal(self.positions, other.positions))

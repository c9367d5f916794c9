"""Per-row results of a pass over a stream, gathered without growing the heap."""

from __future__ import annotations

import torch


class RowCollector:
    """Rows appended batch by batch (`[b, ...]` tensors), returned as one `[N, ...]` tensor.

    Keeping each batch's small result in a list and concatenating at the end fragments
    glibc's heap: a kept result takes a piece of the space the batch's freed activations
    left, the next batch's activations no longer fit there, and the heap grows by about
    one batch of activations per batch, so a streamed pass grows with its rows
    (measured: docs/ARCHITECTURE.md). Copying rows into buffers of `chunk_bytes`,
    larger than glibc's biggest mmap threshold (32 MiB), keeps them out of the heap, and
    pages of a buffer never written stay unallocated.
    """

    def __init__(self, chunk_bytes: int = 64 << 20) -> None:
        self.chunk_bytes = chunk_bytes
        self.rows = 0
        self._chunks: list[torch.Tensor] = []
        self._filled = 0

    def append(self, rows: torch.Tensor) -> None:
        """Copy `rows` (any device; stored on the CPU) after the rows appended so far."""
        rows = rows.detach()
        if self._chunks and rows.shape[1:] != self._chunks[0].shape[1:]:
            expected = tuple(self._chunks[0].shape[1:])
            raise ValueError(f"rows of shape {tuple(rows.shape[1:])} after rows of {expected}")
        start = 0
        while start < len(rows):
            if not self._chunks or self._filled == len(self._chunks[-1]):
                row_bytes = max(rows[0].numel() * rows.element_size(), 1)
                capacity = max(self.chunk_bytes // row_bytes, 1)
                self._chunks.append(torch.empty((capacity, *rows.shape[1:]), dtype=rows.dtype))
                self._filled = 0
            chunk = self._chunks[-1]
            take = min(len(rows) - start, len(chunk) - self._filled)
            chunk[self._filled : self._filled + take].copy_(rows[start : start + take])
            self._filled += take
            start += take
        self.rows += len(rows)

    def result(self) -> torch.Tensor:
        """Every appended row, in order (a view of the buffer when one was enough)."""
        if not self._chunks:
            raise ValueError("no rows were appended")
        parts = [*self._chunks[:-1], self._chunks[-1][: self._filled]]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

"""Exact k-NN search that streams the bank in row blocks, within a memory budget.

At the ImageNet shape (1.28M x 2048 ResNet-50 features) the float32 bank is 10.5 GB: more than a
2 GB budget, so it is never held whole. Instead:
- the bank is read block by block (`FileRows`: `os.pread` of whole rows from a .npy or safetensors
  file into one reused buffer; never memory-mapped, since mapped pages count toward the process's
  resident memory and would grow to the whole file), each block is checked and L2-normalised in
  place (`arrays.unit_rows_`: a row holding NaN, Inf or only zeros is refused naming the file and
  the row; the norm is taken in float64, so any scale gives the same unit rows);
- each block is searched exactly (`faiss.knn`, inner product: blocked sgemm + top-k heaps) and
  merged into a running top-k per query (`faiss.ResultHeap`), with the ids offset to bank rows;
- queries go in chunks too, each chunk streaming the whole bank once.
`plan_stream` sizes the query chunk, the bank block and FAISS's sgemm tile so that they, the
heaps and the block results fit in what the budget leaves after what the process already holds.
The results equal one exact search over the whole bank (ties may come in another order).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from .arrays import as_numpy, unit_rows_

GIB = 1 << 30
QUERY_TILE = 4096  # FAISS multiplies this many queries at a time
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


class RowSource:
    """A 2-D float matrix read in row blocks as float32: `shape`, `len()`, `x[a:b]`."""

    shape: tuple[int, int]
    name: str = "<memory>"
    ndim = 2
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("row blocks only: x[start:stop]")
        start, stop, _ = rows.indices(self.shape[0])
        return self.read(start, max(start, stop))

    def read(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        raise NotImplementedError

    def read_unit(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows start..stop checked and L2-normalised (`arrays.unit_rows_`), float32 (B, D)."""
        return unit_rows_(self.read(start, stop, out), self.name, start, len(self))

    @property
    def stored_bytes_per_row(self) -> int:
        return 4 * self.shape[1]


class ArrayRows(RowSource):
    """Row blocks of an in-memory array (numpy or torch), converted to float32 block by block."""

    def __init__(self, x, name: str = "<memory>"):
        self.x = as_numpy(x)
        self.shape = tuple(self.x.shape)
        self.name = name

    def read(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        block = self.x[start:stop]
        if out is None:
            return np.array(block, dtype=np.float32)
        out = out[:stop - start]
        out[...] = block
        return out

    def read_unit(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Normalised from the array's own dtype (float64 rows beyond float32's range included)."""
        out = np.empty((stop - start, self.shape[1]), np.float32) if out is None else out[:stop - start]
        return unit_rows_(self.x[start:stop], self.name, start, len(self), out)


class FileRows(RowSource):
    """Row blocks of a C-ordered (N, D) float32 / float16 / bfloat16 matrix at `offset` in a file."""

    def __init__(self, path: str, offset: int, shape: tuple[int, int], stored: np.dtype, bfloat16: bool = False):
        self.name, self.offset, self.shape = path, int(offset), (int(shape[0]), int(shape[1]))
        self.stored, self.bfloat16 = np.dtype(stored), bfloat16
        need = self.offset + self.shape[0] * self.shape[1] * self.stored.itemsize
        if os.path.getsize(path) < need:
            raise ValueError(f"{path}: the file is truncated ({os.path.getsize(path)} bytes, its header "
                             f"describes {need})")

    @property
    def stored_bytes_per_row(self) -> int:
        return self.shape[1] * self.stored.itemsize

    def read(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        rows, d = stop - start, self.shape[1]
        if out is None:
            out = np.empty((rows, d), np.float32)
        out = out[:rows]
        if self.stored == np.float32:
            raw = out.view(np.uint8).reshape(-1)
        else:
            raw = np.empty(rows * d * self.stored.itemsize, np.uint8)
        with open(self.name, "rb", buffering=0) as f:
            view, pos, got = memoryview(raw), self.offset + start * self.stored_bytes_per_row, 0
            while got < len(raw):
                n = f.readinto(view[got:]) if f.seek(pos + got) is not None else 0
                if not n:
                    raise ValueError(f"{self.name}: the file ended early (rows {start}-{stop})")
                got += n
        if self.bfloat16:  # the upper half of a float32
            out.view(np.uint32)[...] = raw.view("<u2").reshape(rows, d).astype(np.uint32) << 16
        elif self.stored != np.float32:
            out[...] = raw.view(self.stored).reshape(rows, d)
        return out


def open_rows(path: str, key: str = "embeddings") -> FileRows:
    """The (N, D) matrix of a `.npy` file or the `key` tensor of a safetensors file, read lazily
    (only the header is parsed: JSON for safetensors, numpy's header parser for .npy; no pickle)."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        if ext == ".npy":
            from numpy.lib import format as npformat

            version = npformat.read_magic(f)
            shape, fortran, dtype = (npformat.read_array_header_1_0(f) if version == (1, 0)
                                     else npformat.read_array_header_2_0(f))
            if dtype.kind != "f" or dtype.itemsize not in (2, 4) or len(shape) != 2 or fortran:
                raise ValueError(f"{path}: expected a C-ordered 2-D float32 or float16 array, found "
                                 f"{dtype} {shape}{' (Fortran order)' if fortran else ''}")
            return FileRows(path, f.tell(), shape, dtype.newbyteorder("<") if dtype.byteorder == "=" else dtype)
        if ext == ".safetensors":
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100 << 20:
                raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
            header = json.loads(f.read(size))
            entry = header.get(key) if isinstance(header, dict) else None
            try:
                shape, begin = tuple(int(v) for v in entry["shape"]), 8 + size + int(entry["data_offsets"][0])
                stored = _SAFETENSORS_DTYPES[entry["dtype"]]
            except (TypeError, KeyError, IndexError, ValueError):
                raise ValueError(f"{path}: no 2-D float tensor '{key}' (F32, F16 or BF16)") from None
            if len(shape) != 2:
                raise ValueError(f"{path}: no 2-D float tensor '{key}' (F32, F16 or BF16)")
            return FileRows(path, begin, shape, stored, bfloat16=entry["dtype"] == "BF16")
    raise ValueError(f"{path}: only .npy and .safetensors banks can be streamed")


@contextlib.contextmanager
def blas_tiles(query_bs: int, database_bs: int) -> Iterator[None]:
    """FAISS's brute-force tile (query_bs x database_bs floats) while searching, restored afterwards."""
    import faiss

    cvar = faiss.cvar
    saved = (cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs)
    cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = query_bs, database_bs
    try:
        yield
    finally:
        cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = saved


def resident_gb() -> float:
    """This process's resident memory now (GB), from /proc; 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_resident_gb() -> float:
    """This program's peak resident memory so far (GB): VmHWM of /proc/self/status, which starts
    afresh at exec. (getrusage's ru_maxrss does not: a child inherits its parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


@dataclass
class StreamPlan:
    """How a streamed search splits its work (rows), and the bytes it plans to hold at once."""

    query_rows: int
    bank_rows: int
    database_tile: int  # FAISS's sgemm tile is QUERY_TILE x database_tile floats
    working_bytes: int

    def describe(self) -> str:
        return (f"{self.query_rows} queries x {self.bank_rows} bank rows a block, "
                f"{self.working_bytes / GIB:.2f} GB working memory")


def plan_stream(n: int, q: int, d: int, k: int, working_gb: float, stored_bytes_per_row: int = 0) -> StreamPlan:
    """Chunk sizes for `stream_search` that hold at most `working_gb` at once.

    Held at once: the query chunk (rows x D float32) with its running heap and the current
    block's top-k (2 x rows x k x 12 bytes), the bank block (float32, plus the stored rows when the
    file holds float16), and FAISS's sgemm tile. The query chunk takes at most a third of it and
    the tile at most an eighth (capped at 128 MiB, where sgemm is at full speed already).
    """
    budget = int(working_gb * GIB)
    tile = int(min(8192, max(1024, budget / 8 / (QUERY_TILE * 4))))
    tile_bytes = QUERY_TILE * tile * 4
    per_query = d * 4 + 2 * k * 12
    query_rows = int(max(1, min(q, budget // 3 // per_query)))
    per_bank_row = d * 4 + (stored_bytes_per_row if stored_bytes_per_row and stored_bytes_per_row < d * 4 else 0)
    left = budget - tile_bytes - query_rows * per_query
    bank_rows = int(max(min(n, k), min(n, left // per_bank_row)))
    working = tile_bytes + query_rows * per_query + bank_rows * per_bank_row
    return StreamPlan(query_rows, bank_rows, tile, working)


# Kept back from what the budget leaves: 10%, and 64 MiB for what comes after the plan (the votes,
# the BLAS libraries' per-thread buffers, the allocator's slack).
HEADROOM, RESERVE_GB = 0.9, 1 / 16


def working_budget_gb(memory_budget_gb: float) -> float:
    """What the budget leaves for the search after what this process already holds (at least a
    quarter of the budget: a budget below the process's own size is not an error, only tight)."""
    return max(HEADROOM * (memory_budget_gb - resident_gb()) - RESERVE_GB, memory_budget_gb / 4)


def stream_search(bank: RowSource, queries: RowSource, k: int, plan: StreamPlan, progress: bool = False
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield `(start, similarities (B, k) float32, ids (B, k) int64)` per chunk of queries, best
    first: the exact top-k inner products of the L2-normalised queries and bank rows."""
    import faiss
    from tqdm.auto import tqdm

    n, q = len(bank), len(queries)
    block = np.empty((plan.bank_rows, bank.shape[1]), np.float32)  # reused for every bank block
    passes = math.ceil(q / plan.query_rows) * math.ceil(n / plan.bank_rows)
    bar = tqdm(total=passes, desc="k-NN search", unit="block", disable=not progress or passes < 2)
    with blas_tiles(QUERY_TILE, plan.database_tile):
        for qs in range(0, q, plan.query_rows):
            chunk = queries.read_unit(qs, min(q, qs + plan.query_rows))  # (B, D)
            heap = faiss.ResultHeap(len(chunk), k, keep_max=True)
            for bs in range(0, n, plan.bank_rows):
                rows = bank.read_unit(bs, min(n, bs + plan.bank_rows), out=block)  # (b, D)
                sims, ids = faiss.knn(chunk, rows, min(k, len(rows)),
                                      metric=faiss.METRIC_INNER_PRODUCT)
                heap.add_result(sims, ids + bs)
                bar.update(1)
            heap.finalize()
            yield qs, heap.D, heap.I
    bar.close()

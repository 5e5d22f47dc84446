"""Shared loading and metric code for the peer benchmarks.

The metric is the one fixed by the benchmark contract (identical in every
system):

* item universe = items that appear in train.tsv;
* for every user with at least one test item, rank all universe items except
  the user's own train items and take the top 10;
* recall@10 = hits / |test items of the user| (not min(10, |test|));
* NDCG@10 (binary) = DCG / IDCG with DCG = sum over hits at 1-based rank r of
  1/log2(r+1) and IDCG = sum_{r=1..min(10,|test|)} 1/log2(r+1);
* test items outside the universe count in |test| but can never be hit;
* users without train items are ranked by popularity;
* averages are over the users with >= 1 test item.

Files are header-less TSV `user_id<TAB>item_id`; duplicate lines are one
(binary) interaction.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def set_thread_env(threads: int) -> None:
    """Pin native thread pools; call before numpy/scipy/implicit are imported."""
    for var in (
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OMP_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    ):
        os.environ[var] = str(threads)


def read_pairs(path: str, chunk_bytes: int = 2 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Reads `user<TAB>item` lines; returns the two id columns as fixed-width bytes arrays.

    Parsing stays in numpy (no Python object per id) and streams the file in
    chunks, so a 4M-line file costs about the two id arrays in memory: the
    peer's peak RSS should reflect the recommender, not a wasteful loader.
    """
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(chunk_bytes)
            data = rest + block
            if not block:
                rest = b""
            else:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
            if data:
                u, i = _parse_lines(data, path)
                users.append(u)
                items.append(i)
                del data
                release_free_memory()
            if not block:
                break
    return _concat_fixed(users), _concat_fixed(items)


def _concat_fixed(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype="S1")
    width = max(p.dtype.itemsize for p in parts)
    return np.concatenate([p.astype(f"S{width}") for p in parts])


def _parse_lines(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.zeros(0, dtype=np.int64)
    nonempty = ends > starts
    starts, ends = starts[nonempty], ends[nonempty]
    tabs = np.flatnonzero(buf == 9)
    if len(tabs) != len(starts) or np.any(tabs < starts) or np.any(tabs >= ends):
        raise ValueError(f"{path}: every line must be exactly user_id<TAB>item_id")
    return _fields(buf, starts, tabs), _fields(buf, tabs + 1, ends)


def _fields(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lens = ends - starts
    if len(lens) and lens.min() == 0:
        raise ValueError("empty user_id or item_id")
    width = int(lens.max()) if len(lens) else 1
    cols = np.arange(width)
    idx = np.minimum(starts[:, None] + cols[None, :], len(buf) - 1)
    out = np.where(cols[None, :] < lens[:, None], buf[idx], 0).astype(np.uint8)
    return np.ascontiguousarray(out).view(f"S{width}").ravel()


def release_free_memory() -> None:
    """Hands freed heap pages back to the OS (glibc malloc_trim), so RSS
    measured afterwards reflects live data rather than allocator caching."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Dataset:
    """A train/test split on one index space.

    Users: train users first, then test-only users. Items: the train universe
    (0..n_items-1). `test` holds only in-universe test items; `n_test` counts
    all distinct test items of each user (in-universe or not).
    """

    train: sp.csr_matrix  # n_users x n_items, binary float32
    test: sp.csr_matrix  # n_users x n_items, binary
    n_test: np.ndarray  # per user, distinct test items incl. out-of-universe
    n_train_users: int
    user_ids: np.ndarray  # bytes ids, index -> id
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def eval_users(self) -> np.ndarray:
        return np.flatnonzero(self.n_test > 0)


def binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape, dtype=np.float32
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def make_dataset(train_u: np.ndarray, train_i: np.ndarray, test_u: np.ndarray, test_i: np.ndarray) -> Dataset:
    """Index space: users = train users (sorted) then test-only users (sorted);
    items = train items (sorted). Ids are bytes arrays from read_pairs."""
    uw = max(train_u.dtype.itemsize, test_u.dtype.itemsize)
    train_u, test_u = _keys(train_u, uw), _keys(test_u, uw)
    iw = max(train_i.dtype.itemsize, test_i.dtype.itemsize)
    train_i, test_i = _keys(train_i, iw), _keys(test_i, iw)

    users, tu = _unique_inverse(train_u)
    del train_u
    items, ti = _unique_inverse(train_i)
    del train_i
    n_train_users, n_items = len(users), len(items)
    cold = np.setdiff1d(np.unique(test_u), users)
    all_users = np.concatenate((users, cold))
    # test users -> index (train users via users, test-only via cold)
    pos = np.searchsorted(users, test_u).clip(max=max(n_train_users - 1, 0))
    known = (users[pos] == test_u) if n_train_users else np.zeros(len(test_u), dtype=bool)
    eu = np.where(known, pos, n_train_users + np.searchsorted(cold, test_u))
    # test items -> universe index, or n_items + k for items outside the universe
    pos = np.searchsorted(items, test_i).clip(max=max(n_items - 1, 0))
    in_univ = (items[pos] == test_i) if n_items else np.zeros(len(test_i), dtype=bool)
    outside, out_idx = np.unique(test_i[~in_univ], return_inverse=True)
    ei = pos.astype(np.int64)
    ei[~in_univ] = n_items + out_idx
    n_users = len(all_users)
    n_all_items = n_items + len(outside)
    train = binary_csr(tu, ti, (n_users, n_items))
    pairs = np.unique(eu.astype(np.int64) * max(n_all_items, 1) + ei)
    pu, pi = pairs // max(n_all_items, 1), pairs % max(n_all_items, 1)
    n_test = np.bincount(pu, minlength=n_users).astype(np.int64)
    keep = pi < n_items
    test = binary_csr(pu[keep], pi[keep], (n_users, n_items))
    return Dataset(
        train=train,
        test=test,
        n_test=n_test,
        n_train_users=n_train_users,
        user_ids=_unkeys(all_users, uw),
        item_ids=_unkeys(items, iw),
    )


def _unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) with int32 inverse and the
    temporaries released right away (keeps the loader's peak RSS down)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    uniq = sorted_keys[first]
    del sorted_keys
    rank = np.cumsum(first, dtype=np.int32) - 1
    del first
    inverse = np.empty(len(keys), dtype=np.int32)
    inverse[order] = rank
    del order, rank
    release_free_memory()
    return uniq, inverse


def _keys(ids: np.ndarray, width: int) -> np.ndarray:
    """Sortable keys for fixed-width byte ids: ids of <= 8 bytes become
    big-endian uint64 (same order as the bytes, and np.unique on integers
    needs a fraction of the memory it needs on strings); longer ids stay bytes."""
    if width <= 8:
        return ids.astype("S8").view(">u8").astype(np.uint64)
    return ids.astype(f"S{width}")


def _unkeys(keys: np.ndarray, width: int) -> np.ndarray:
    if keys.dtype == np.uint64:
        return keys.astype(">u8").view("S8").astype(f"S{width}")
    return keys


def load_split(train_path: str, test_path: str) -> Dataset:
    t0 = time.perf_counter()
    tu, ti = read_pairs(train_path)
    eu, ei = read_pairs(test_path)
    n_train_lines, n_test_lines = len(tu), len(eu)
    ds = make_dataset(tu, ti, eu, ei)
    del tu, ti, eu, ei
    release_free_memory()
    log(
        f"loaded {train_path} ({n_train_lines} lines) + {test_path} ({n_test_lines} lines): "
        f"{ds.n_users} users ({ds.n_train_users} with train), {ds.n_items} items, "
        f"{ds.train.nnz} train / {int(ds.n_test.sum())} test interactions "
        f"[{time.perf_counter() - t0:.1f}s]"
    )
    return ds


def validation_split(train: sp.csr_matrix, frac: float = 0.2, seed: int = 7) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Carves a validation split out of TRAIN only.

    Per user with >= 2 train items: a random `frac` of that user's items
    (at least one, rounded) goes to validation; the rest stays in the
    sub-train. Users with < 2 items keep everything. Same index space.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = train.shape
    counts = np.diff(train.indptr)
    tr_rows, tr_cols, va_rows, va_cols = [], [], [], []
    for u in range(n_users):
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        n = len(items)
        if n == 0:
            continue
        if n < 2:
            tr_rows.append(np.full(n, u))
            tr_cols.append(items)
            continue
        nv = min(n - 1, max(1, int(round(frac * n))))
        perm = rng.permutation(items)
        va_rows.append(np.full(nv, u))
        va_cols.append(perm[:nv])
        tr_rows.append(np.full(n - nv, u))
        tr_cols.append(perm[nv:])
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    sub = binary_csr(cat(tr_rows), cat(tr_cols), (n_users, n_items))
    val = binary_csr(cat(va_rows), cat(va_cols), (n_users, n_items))
    assert sub.nnz + val.nnz == train.nnz and counts.sum() == train.nnz
    return sub, val


def popularity(train: sp.csr_matrix) -> np.ndarray:
    """Number of train users per item."""
    return np.asarray((train > 0).sum(axis=0), dtype=np.float64).ravel()


_DISC = 1.0 / np.log2(np.arange(2, 12, dtype=np.float64))  # ranks 1..10


def _dense_topk(s: np.ndarray, tr: sp.csr_matrix, out_of_universe: np.ndarray, k: int):
    """Top-k of a dense (b x n_items) float32 score block, in place: masks the
    rows' train items and the out-of-universe items to -inf. Returns (ids, valid)."""
    b, n_items = s.shape
    if np.isnan(s).any():  # never recommend NaN: treat as worst
        s[np.isnan(s)] = -np.inf
    if len(out_of_universe):
        s[:, out_of_universe] = -np.inf
    rows = np.repeat(np.arange(b), np.diff(tr.indptr))
    s[rows, tr.indices] = -np.inf
    kk = min(k, n_items)
    top = np.argpartition(s, n_items - kk, axis=1)[:, n_items - kk :]
    top_scores = np.take_along_axis(s, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    valid = np.isfinite(np.take_along_axis(top_scores, order, axis=1))
    return top, valid


def evaluate(
    score_block,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    n_test: np.ndarray,
    k: int = 10,
    block: int = 2048,
    topk_block=None,
) -> dict[str, float]:
    """Contract metric.

    `score_block(user_idx) -> (len(user_idx), n_items)` dense scores; or, for
    speed on big catalogues, `topk_block(user_idx, train_rows, excluded_items, k)
    -> (ids, scores)` that already excludes each user's train items and the
    `excluded_items` (ids < 0 or non-finite scores are treated as empty slots).

    The universe is the set of items with at least one interaction in `train`
    (so a validation sub-train gets its own universe). Users with no train
    items get popularity scores, whatever the scorer says for them.
    """
    assert k <= len(_DISC)
    n_users, n_items = train.shape
    users = np.flatnonzero(n_test > 0)
    if len(users) == 0:
        return {"recall_at_10": 0.0, "ndcg_at_10": 0.0, "users": 0}
    pop = popularity(train).astype(np.float32)
    out_of_universe = np.flatnonzero(pop == 0)
    idcg_table = np.cumsum(_DISC[:k])
    disc = _DISC[:k]
    recall_sum = 0.0
    ndcg_sum = 0.0
    for start in range(0, len(users), block):
        ub = users[start : start + block]
        b = len(ub)
        tr = train[ub]
        cold = np.diff(tr.indptr) == 0
        if topk_block is not None:
            ids, scores = topk_block(ub, tr, out_of_universe, k)
            top = np.full((b, k), -1, dtype=np.int64)
            valid = np.zeros((b, k), dtype=bool)
            top[:, : ids.shape[1]] = ids
            valid[:, : ids.shape[1]] = (ids >= 0) & np.isfinite(scores)
            if cold.any():
                ci = np.flatnonzero(cold)
                ct, cv = _dense_topk(np.tile(pop, (len(ci), 1)), tr[ci], out_of_universe, k)
                top[ci, : ct.shape[1]], valid[ci, : ct.shape[1]] = ct, cv
        else:
            s = np.asarray(score_block(ub), dtype=np.float32)
            if s.shape != (b, n_items):
                raise ValueError(f"scorer returned {s.shape}, expected {(b, n_items)}")
            if not s.flags.writeable:
                s = np.array(s, dtype=np.float32, copy=True)
            if cold.any():
                s[cold] = pop
            top, valid = _dense_topk(s, tr, out_of_universe, k)
            del s
        # hits: is (row, item) a test pair? test rows are sorted, so keys are sorted
        te = test[ub]
        te.sort_indices()
        te_keys = np.repeat(np.arange(b, dtype=np.int64), np.diff(te.indptr)) * n_items + te.indices
        top_keys = np.arange(b, dtype=np.int64)[:, None] * n_items + np.maximum(top, 0)
        if len(te_keys):
            pos = np.searchsorted(te_keys, top_keys).clip(max=len(te_keys) - 1)
            hits = (te_keys[pos] == top_keys) & valid
        else:
            hits = np.zeros_like(valid)
        nt = n_test[ub].astype(np.float64)
        recall_sum += float((hits.sum(axis=1) / nt).sum())
        dcg = (hits * disc[: hits.shape[1]]).sum(axis=1)
        idcg = idcg_table[np.minimum(k, n_test[ub]) - 1]
        ndcg_sum += float((dcg / idcg).sum())
    n = len(users)
    return {"recall_at_10": recall_sum / n, "ndcg_at_10": ndcg_sum / n, "users": n}


def peak_rss_mb() -> float:
    """ru_maxrss of this process, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets the kernel's RSS high-water mark (and so ru_maxrss) to the current
    RSS (Linux >= 4.0, /proc/self/clear_refs "5"). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

#!/usr/bin/env python3
"""Peer train-speed benchmark: implicit's CPU ALS (conjugate gradient) on DIR/train.tsv.

    train_speed.py --dir D --factors 64 --iterations 15 --threads 2 [--alpha A --reg R]

fit_seconds is the wall time of the `.fit` call only (the user x item CSR is
built before the clock starts). peak_rss_mb is the process's ru_maxrss (MB)
over loading + fit, taken before any evaluation buffers exist;
fit_peak_rss_mb is the process's peak RSS during the fit alone (high-water
mark reset after loading; it still includes the interpreter, the loaded
matrices and the model), or null where the kernel cannot reset it.
fit_cpu_seconds (user + system CPU time of the process during the fit) helps
to read a wall time taken on a busy machine. recall_at_10 (and ndcg_at_10)
follow the benchmark contract on DIR/test.tsv. The last stdout line is one
JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="directory with train.tsv and test.tsv")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alpha", type=float, default=10.0, help="confidence = 1 + alpha * x (x binary)")
    p.add_argument("--reg", type=float, default=0.1, help="L2 regularization (implicit's, not scaled by counts)")
    p.add_argument("--cg-steps", type=int, default=3, help="CG steps per solve (implicit's default 3)")
    p.add_argument("--eval-block", type=int, default=4096, help="users per scoring block")
    p.add_argument("--dense-eval", action="store_true", help="score with numpy matmul + argpartition instead of implicit's topk")
    p.add_argument("--no-eval", action="store_true", help="skip recall@10 (speed only)")
    p.add_argument(
        "--eval-users",
        type=int,
        default=0,
        help="evaluate on a seeded random sample of this many test users (0 = all; for --large runs)",
    )
    return p.parse_args()


ARGS = parse_args()

from common import set_thread_env  # noqa: E402

set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from common import current_rss_mb, evaluate, load_split, log, peak_rss_mb, reset_peak_rss  # noqa: E402


def main() -> None:
    import implicit
    from implicit.cpu.als import AlternatingLeastSquares

    log(f"numpy {np.__version__}, implicit {implicit.__version__}, threads {ARGS.threads}")
    ds = load_split(os.path.join(ARGS.dir, "train.tsv"), os.path.join(ARGS.dir, "test.tsv"))
    x = ds.train  # users x items CSR, binary float32 (implicit >= 0.5 takes user_items)
    gc.collect()
    load_peak = peak_rss_mb()
    log(f"after load: rss {current_rss_mb():.0f} MB, peak so far {load_peak:.0f} MB")
    # Separate the fit's own peak from the loader's: reset the high-water mark
    # (the whole-process peak is still reported as peak_rss_mb).
    can_reset = reset_peak_rss()

    # implicit parallelises the ALS sweeps itself over `num_threads` OpenMP
    # threads; BLAS is kept at one thread inside the fit (implicit's own
    # recommendation, it warns otherwise) so the fit uses exactly --threads cores.
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=ARGS.factors,
            regularization=ARGS.reg,
            alpha=ARGS.alpha,
            iterations=ARGS.iterations,
            use_cg=True,
            num_threads=ARGS.threads,
            random_state=42,
            calculate_training_loss=False,
        )
        model.cg_steps = ARGS.cg_steps  # an attribute, not a constructor argument, in 0.7
        pools = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
        log(f"thread pools during fit: {pools}; implicit num_threads={ARGS.threads}")
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, show_progress=False)
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    fit_peak = peak_rss_mb()
    rss = max(load_peak, fit_peak)
    log(
        f"fit {fit_s:.2f}s wall, {fit_cpu:.2f}s cpu; peak rss: process {rss:.0f} MB, during fit "
        f"{fit_peak if can_reset else float('nan'):.0f} MB (after load {load_peak:.0f} MB)"
    )

    out = {
        "system": "implicit_als",
        "fit_seconds": round(fit_s, 3),
        "fit_cpu_seconds": round(fit_cpu, 3),
        "peak_rss_mb": round(rss, 1),
        "fit_peak_rss_mb": round(fit_peak, 1) if can_reset else None,
    }
    if not ARGS.no_eval:
        u = np.asarray(model.user_factors, dtype=np.float32)
        v = np.asarray(model.item_factors, dtype=np.float32)
        n_test = ds.n_test
        if ARGS.eval_users and ARGS.eval_users < int((n_test > 0).sum()):
            rng = np.random.default_rng(42)
            keep = rng.choice(np.flatnonzero(n_test > 0), size=ARGS.eval_users, replace=False)
            n_test = np.zeros_like(ds.n_test)
            n_test[keep] = ds.n_test[keep]
        t1 = time.perf_counter()
        with threadpool_limits(limits=ARGS.threads):
            if ARGS.dense_eval:
                r = evaluate(lambda ub: u[ub] @ v.T, x, ds.test, n_test, block=ARGS.eval_block)
            else:
                from implicit.cpu.topk import topk

                # implicit's own top-k (what model.recommend uses): dot products
                # + selection in C++ over num_threads, with the user's train
                # items and the out-of-universe items filtered out.
                def topk_block(ub, tr, excluded, k):
                    return topk(
                        v, u[ub], k, filter_query_items=tr, filter_items=excluded if len(excluded) else None,
                        num_threads=ARGS.threads,
                    )

                r = evaluate(None, x, ds.test, n_test, block=ARGS.eval_block, topk_block=topk_block)
        log(
            f"eval over {r['users']} users: recall@10={r['recall_at_10']:.4f} "
            f"ndcg@10={r['ndcg_at_10']:.4f} ({time.perf_counter() - t1:.1f}s)"
        )
        out["recall_at_10"] = round(r["recall_at_10"], 4)
        out["ndcg_at_10"] = round(r["ndcg_at_10"], 4)
        out["eval_users"] = r["users"]
    else:
        out["recall_at_10"] = None
    out.update(
        {
            "factors": ARGS.factors,
            "iterations": ARGS.iterations,
            "threads": ARGS.threads,
            "alpha": ARGS.alpha,
            "regularization": ARGS.reg,
        }
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

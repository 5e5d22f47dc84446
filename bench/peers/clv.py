"""Reference side of bench/clv: lifetimes 0.11.3 on its own CDNOW data.

  clv.py fit SUMMARY_CSV                 -> {"system": "lifetimes", "r", "alpha", "a", "b", ...}
  clv.py transactions MASTER_TXT OUT_CSV -> CDNOW_master.txt as customer_id,date,amount CSV
  clv.py summary TX_CSV FREQ END OUT_CSV -> summary_data_from_transaction_data(...) as CSV
  clv.py compare OURS_JSON THEIRS_CSV    -> per-customer comparison of frequency, recency, T
"""
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import pandas as pd  # noqa: E402


def fit(path):
    from lifetimes import BetaGeoFitter

    d = pd.read_csv(path)
    t0 = time.perf_counter()
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(d["frequency"], d["recency"], d["T"])
    secs = time.perf_counter() - t0
    p = bgf.params_
    print(json.dumps({"system": "lifetimes", "r": float(p["r"]), "alpha": float(p["alpha"]),
                      "a": float(p["a"]), "b": float(p["b"]), "customers": int(len(d)),
                      "fit_seconds": round(secs, 4)}))


def transactions(master, out):
    # Whitespace-separated: customer_id date(YYYYMMDD) number_of_cds dollar_value.
    d = pd.read_csv(master, sep=r"\s+", header=0, dtype={"customer_id": str, "date": str})
    d = d.rename(columns={"dollar_value": "amount"})
    d["date"] = pd.to_datetime(d["date"], format="%Y%m%d").dt.strftime("%Y-%m-%d")
    d[["customer_id", "date", "amount"]].to_csv(out, index=False)
    print(f"{len(d)} transactions, {d['customer_id'].nunique()} customers", file=sys.stderr)


def summary(tx, freq, end, out):
    from lifetimes.utils import summary_data_from_transaction_data

    d = pd.read_csv(tx, dtype={"customer_id": str})
    s = summary_data_from_transaction_data(d, "customer_id", "date", monetary_value_col="amount",
                                           observation_period_end=end, freq=freq)
    s.to_csv(out, index_label="customer_id")


def compare(ours_json, theirs_csv):
    with open(ours_json) as f:
        ours = {c["customer"]: c for c in json.load(f)["customers"]}
    theirs = pd.read_csv(theirs_csv, dtype={"customer_id": str}).set_index("customer_id")
    problems = []
    if set(ours) != set(theirs.index):
        problems.append(f"customer sets differ: {len(set(ours) ^ set(theirs.index))} not in both")
    worst = {"frequency": 0.0, "recency": 0.0, "T": 0.0, "monetary_value": 0.0}
    for cid, row in theirs.iterrows():
        o = ours.get(cid)
        if o is None:
            continue
        for k in worst:
            diff = abs(float(o[k]) - float(row[k]))
            worst[k] = max(worst[k], diff)
            if diff > 1e-9 * max(1.0, abs(float(row[k]))) and len(problems) < 10:
                problems.append(f"customer {cid}: {k} ours {o[k]} lifetimes {row[k]}")
    print(json.dumps({"customers": len(theirs), "max_abs_diff": worst, "equal": not problems}))
    for p in problems:
        print(p, file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fit":
        fit(*args)
    elif cmd == "transactions":
        transactions(*args)
    elif cmd == "summary":
        summary(*args)
    elif cmd == "compare":
        sys.exit(compare(*args))
    else:
        sys.exit(f"unknown command {cmd}")

"""How much Acc@1 (Eq. 6) the behaviour of a run leaves for any retriever: reference points beside the
Table 2 comparison (`mmrank pretrain compare`).

For the test pairs of each query modality (S = their positives, as in Eq. 6):

* image queries: the share whose purchased item is the photographed item itself (which item a photo
  shows is known only to the market's truth, ``R/truth/requests.parquet``). A retriever that always puts the photographed item first —
  what an off-the-shelf image encoder approximates — cannot score above this share, plus whatever it
  guesses right among the other purchases;
* popularity only: rank S by training purchases, the same list for every query;
* distinct queries: how many test queries are repeats (a retriever can fit repeated text queries).

    .venv/bin/python benchmarks/pretrain_ceiling.py --run R
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import pyarrow.parquet as pq

from mmrank.data.io import read_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    args = ap.parse_args()
    t = read_table(args.run / "data" / "pairs.parquet", "pairs",
                   columns=["request_id", "query_modality", "query_text", "query_image", "pos_item_id",
                            "split"]).to_pydict()
    # Evaluation code may read the truth: which item each photo query shows.
    shown_item = pq.read_table(args.run / "truth" / "requests.parquet",
                               columns=["target_item_id"]).column("target_item_id").to_numpy()
    mod = np.asarray(t["query_modality"])
    test = np.asarray(t["split"]) == "test"
    pos = np.asarray(t["pos_item_id"], np.int64)
    train_ids, train_counts = np.unique(pos[~test], return_counts=True)
    print(f"run {args.run}: {int((~test).sum())} training pairs, {int(test.sum())} test pairs")
    for m in ("image", "text"):
        rows = np.flatnonzero(test & (mod == m))
        if len(rows) == 0:
            continue
        s_items = np.unique(pos[rows])
        k = np.searchsorted(train_ids, s_items).clip(0, len(train_ids) - 1)
        bought = np.where(train_ids[k] == s_items, train_counts[k], 0)
        top = s_items[np.argmax(bought)]
        line = (f"{m:5s} queries: {len(rows):6d} test pairs, |S| = {len(s_items)}; popularity-only Acc@1 "
                f"{np.mean(pos[rows] == top):.4f}")
        if m == "image":
            shot = shown_item[np.asarray(t["request_id"], np.int64)[rows]]
            line += f"; purchased item = photographed item: {np.mean(shot == pos[rows]):.4f}"
        else:
            q = np.asarray(t["query_text"], dtype=object)[rows]
            line += f"; distinct query texts {len(set(q))}"
        print(line)


if __name__ == "__main__":
    main()

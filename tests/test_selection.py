"""Selection (paper Alg. 1 lines 5–9): exact ids on a hand-made pool, dedupe, errors, pool formats."""

from __future__ import annotations

import random
from collections import Counter

import datasets
import pyarrow.parquet as pq
import pytest

from medgr2.data.dedupe import dedupe_key, normalise_question, pool_dedupe_keys
from medgr2.data.pools import SelectionError
from medgr2.data.rows import save_rows
from medgr2.data.selection import select, select_ids
from medgr2.data.selection_algorithms import priority, stratum_quotas

# id, score, image, question. Duplicates by (image, normalised question): c06~c01 (lower score),
# c10~c02 (lower), c12~c03 (HIGHER: c12 stays). c11 asks c01's question about another image: not a
# duplicate. c08 is already in D_gen (EXISTING).
POOL = [
    ("c01", 9.0, "img1.png", "Which organ is shown?"),
    ("c02", 7.5, "img2.png", "What modality is this?"),
    ("c03", 7.5, "img3.png", "Is there a lesion?"),
    ("c04", -2.0, "img4.png", "How large is the lesion?"),
    ("c05", 5.0, "img5.png", "Which side?"),
    ("c06", 5.5, "img1.png", "which organ is shown"),
    ("c07", 8.0, "img6.png", "Is the finding benign?"),
    ("c08", 10.0, "img7.png", "What is seen?"),
    ("c09", 0.0, "img8.png", "Grade the lesion."),
    ("c10", 6.0, "img2.png", "What  modality is THIS"),
    ("c11", 3.0, "img9.png", "Which organ is shown?"),
    ("c12", 9.5, "img3.png", "Is there a lesion!"),
]
EXISTING = [("old-1", None, "img7.png", "what is seen")]


def _ds(rows, with_score: bool = True) -> datasets.Dataset:
    cols = {
        "id": [r[0] for r in rows],
        "image": [{"bytes": None, "path": r[2]} for r in rows],
        "question": [r[3] for r in rows],
    }
    if with_score:
        cols["score"] = [r[1] for r in rows]
    return datasets.Dataset.from_dict(cols)


@pytest.fixture
def pool() -> datasets.Dataset:
    return _ds(POOL)


@pytest.fixture
def gen_keys() -> set[str]:
    return pool_dedupe_keys(_ds(EXISTING, with_score=False))


def test_topk_best_first_ties_by_id(pool):
    assert select_ids(pool, "topk", k=3) == ["c08", "c12", "c01"]
    # c02 and c03 tie at 7.5: the smaller id wins the last place.
    assert select_ids(pool, "topk", k=5) == ["c08", "c12", "c01", "c07", "c02"]


def test_topk_without_overlap(pool, gen_keys):
    ids = select_ids(pool, "topk", k=4, exclude_keys=gen_keys, allow_overlap=False)
    assert ids == ["c12", "c01", "c07", "c02"]


def test_threshold_is_strictly_greater(pool):
    assert select_ids(pool, "threshold", tau=7.5) == ["c01", "c07", "c08", "c12"]  # 7.5 itself is out
    assert select_ids(pool, "threshold", tau=-6.0) == [r[0] for r in POOL]


def test_threshold_and_all_without_overlap(pool, gen_keys):
    res = select(pool, "threshold", tau=5.0, exclude_keys=gen_keys, allow_overlap=False)
    assert res.ids == ["c01", "c02", "c07", "c12"]
    assert (res.n_overlap, res.n_duplicates) == (1, 3)
    assert select_ids(pool, "all", exclude_keys=gen_keys, allow_overlap=False) == [
        "c01", "c02", "c04", "c05", "c07", "c09", "c11", "c12"
    ]
    assert select_ids(pool, "all") == [r[0] for r in POOL]


def test_randk_is_seeded_and_deterministic(pool):
    a = select_ids(pool, "randk", k=4, seed=0)
    assert a == select_ids(pool, "randk", k=4, seed=0)
    assert a == ["c01", "c05", "c09", "c08"]  # pinned: the 4 smallest sha1(seed, id)
    assert select_ids(pool, "randk", k=4, seed=1) != a
    # Order of the pool and batching do not matter (a hash order, not a shuffle of positions).
    shuffled = pool.select(random.Random(3).sample(range(len(pool)), len(pool)))
    assert select_ids(shuffled, "randk", k=4, seed=0, batch_size=5) == a
    # RandK ignores scores entirely: it also works on an unscored pool.
    assert select_ids(_ds(POOL, with_score=False), "randk", k=4, seed=0) == a


def test_randk_is_uniform(pool):
    counts = Counter(i for seed in range(300) for i in select_ids(pool, "randk", k=3, seed=seed))
    assert set(counts) == {r[0] for r in POOL}
    assert all(50 <= c <= 100 for c in counts.values()), counts  # expected 75 each (sd ~8)


def test_randk_without_overlap_keeps_the_better_duplicate(pool, gen_keys):
    for seed in range(30):
        ids = select_ids(pool, "randk", k=8, seed=seed, exclude_keys=gen_keys, allow_overlap=False)
        assert sorted(ids) == ["c01", "c02", "c04", "c05", "c07", "c09", "c11", "c12"]
        ids = select_ids(pool, "randk", k=3, seed=seed, exclude_keys=gen_keys, allow_overlap=False)
        assert not {"c08", "c03", "c06", "c10"} & set(ids)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "topk", "k": -1}, "positive integer.*k=-1"),
        ({"method": "topk", "k": 0}, "positive integer"),
        ({"method": "randk", "k": 13}, r"k=13 is larger than the pool \(12 candidates\)"),
        ({"method": "topk", "k": None}, "needs k"),
        ({"method": "threshold", "tau": 11}, r"tau=11 is outside the reward scale \[-6, 10\]"),
        ({"method": "threshold", "tau": None}, "needs tau"),
        ({"method": "best", "k": 2}, "unknown selection method"),
    ],
)
def test_clear_errors(pool, kwargs, match):
    with pytest.raises(SelectionError, match=match):
        select_ids(pool, **kwargs)


def test_missing_score_column_says_run_score_first():
    unscored = _ds(POOL, with_score=False)
    for method, kw in (("topk", {"k": 2}), ("threshold", {"tau": 0.0})):
        with pytest.raises(SelectionError, match="no 'score' column: run stage=score first"):
            select_ids(unscored, method, **kw)


def test_allow_fewer(pool, gen_keys):
    assert len(select_ids(pool, "topk", k=13, allow_fewer=True)) == 12
    with pytest.raises(SelectionError, match="only 8 of the 12"):
        select_ids(pool, "topk", k=10, exclude_keys=gen_keys, allow_overlap=False)
    assert len(select_ids(pool, "topk", k=10, exclude_keys=gen_keys, allow_overlap=False, allow_fewer=True)) == 8


def test_dedupe_key_normalises_question_and_hashes_image_bytes():
    assert normalise_question("  What's   the ORGAN? ") == "whats the organ"
    a = dedupe_key({"image": {"bytes": b"\x89PNG-1", "path": "a.png"}, "question": "Which organ?"})
    b = dedupe_key({"image": {"bytes": b"\x89PNG-1", "path": "elsewhere.png"}, "question": "which  organ"})
    c = dedupe_key({"image": {"bytes": b"\x89PNG-2", "path": "a.png"}, "question": "Which organ?"})
    assert a == b != c


def test_bounded_heap_matches_brute_force():
    """TopK/RandK with dedupe through an O(k) heap == sort-everything, on random pools with many dupes."""
    rng = random.Random(0)
    for trial in range(20):
        rows = [
            (f"r{i:04d}", rng.choice([None, *[round(rng.uniform(-6, 10), 1) for _ in range(5)]]),
             f"img{rng.randrange(60)}", rng.choice(["Q one?", "q one", "Q two"]))
            for i in range(300)
        ]
        ds = _ds(rows)
        excl = {dedupe_key({"image": {"bytes": None, "path": f"img{j}"}, "question": "q two"}) for j in range(5)}
        best: dict[str, tuple] = {}
        for rid, s, img, q in rows:
            key = dedupe_key({"image": {"bytes": None, "path": img}, "question": q})
            rank = (-(s if s is not None else float("-inf")), rid)
            if key not in excl and (key not in best or rank < best[key][0]):
                best[key] = (rank, key, s)
        k = rng.choice([1, 5, 17, 40])
        scored = sorted(v for v in best.values() if v[2] is not None)
        got = select_ids(ds, "topk", k=k, exclude_keys=excl, allow_overlap=False, batch_size=7, allow_fewer=True)
        assert got == [v[0][1] for v in scored[:k]], trial
        seed = trial
        by_prio = sorted(best.values(), key=lambda v: (priority(seed, v[1]), v[0]))
        got = select_ids(ds, "randk", k=k, seed=seed, exclude_keys=excl, allow_overlap=False, batch_size=7)
        assert got == [v[0][1] for v in by_prio[:k]], trial
        plain = sorted(((-(s if s is not None else float("-inf")), rid) for rid, s, _, _ in rows if s is not None))
        assert select_ids(ds, "topk", k=k, batch_size=11) == [rid for _, rid in plain[:k]]


def test_parquet_and_saved_pools_give_the_same_ids_and_rows(tmp_path, pool, gen_keys):
    table = pool.data.table
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    pq.write_table(table.slice(0, 5), files[0])
    pq.write_table(table.slice(5), files[1])
    pool.save_to_disk(str(tmp_path / "saved"))
    want = select_ids(pool, "topk", k=4, exclude_keys=gen_keys, allow_overlap=False)
    for form in (files, tmp_path, str(tmp_path / "saved")):
        res = select(form, "topk", k=4, exclude_keys=gen_keys, allow_overlap=False, batch_size=3)
        assert res.ids == want
        out = save_rows(form, tmp_path / "out", res.positions)
        saved = datasets.load_from_disk(str(out))
        assert saved["id"] == want and saved["score"] == [9.5, 9.0, 8.0, 7.5]
        assert saved.column_names == pool.column_names


# ---------------------------------------------------------------------------------------- stratified


def _typed_pool() -> datasets.Dataset:
    # Type "a" scores high, "b" middling, "c" low: plain TopK would take only "a".
    rows = [(f"{t}{i:02d}", base + i / 100, f"{t}{i}.png", f"q {t} {i}", t)
            for t, base in (("a", 9.0), ("b", 5.0), ("c", 1.0)) for i in range(10)]
    rows += [("c10", 1.5, "c10.png", "q c 10", "c"), ("d00", 0.0, "d0.png", "q d 0", "d")]
    ds = _ds([r[:4] for r in rows])
    return ds.add_column("question_type", [r[4] for r in rows])


def test_stratified_topk_takes_the_best_of_each_type_in_equal_shares():
    ds = _typed_pool()
    plain = select(ds, "topk", k=8)
    assert {i[0] for i in plain.ids} == {"a"}
    res = select(ds, "topk", k=7, stratify="question_type")
    # d has one row: it gives it, the other 6 are split 2/2/2 — and within a type the highest scores win.
    assert Counter(i[0] for i in res.ids) == {"a": 2, "b": 2, "c": 2, "d": 1}
    assert set(res.ids) == {"a08", "a09", "b08", "b09", "c10", "c09", "d00"}
    assert res.ids[:2] == ["a09", "a08"]  # merged ranking, best first
    assert res.scores == sorted(res.scores, reverse=True)
    assert [ds[p]["id"] for p in res.positions] == res.ids


def test_stratified_randk_is_deterministic_and_even():
    ds = _typed_pool()
    a = select(ds, "randk", k=9, seed=3, stratify="question_type")
    b = select(ds, "randk", k=9, seed=3, stratify="question_type")
    assert a.ids == b.ids and len(set(a.ids)) == 9
    # d gives its one row; the other 8 go 3/3/2 (c has 11 rows, so it is filled last).
    assert Counter(i[0] for i in a.ids) == {"a": 3, "b": 3, "c": 2, "d": 1}


def test_stratum_quotas_water_fill_small_strata():
    assert stratum_quotas({"a": 10, "b": 1, "c": 10}, 9) == {"a": 4, "b": 1, "c": 4}
    assert stratum_quotas({"a": 5, "b": 5}, 10) == {"a": 5, "b": 5}
    assert sum(stratum_quotas({"a": 3, "b": 4, "c": 100}, 50).values()) == 50
    assert stratum_quotas({"a": 3, "b": 4, "c": 100}, 50) == {"a": 3, "b": 4, "c": 43}


def test_stratify_is_refused_for_threshold_and_unknown_columns():
    ds = _typed_pool()
    with pytest.raises(SelectionError, match="stratify works with topk and randk"):
        select(ds, "threshold", tau=5.0, stratify="question_type")
    with pytest.raises(SelectionError, match="not a column"):
        select(ds, "topk", k=3, stratify="modality")


def test_stratify_on_two_columns_balances_their_combinations():
    base = _typed_pool()
    ds = base.add_column("answer_text", ["no" if i % 4 == 0 else "yes" for i in range(len(base))])
    res = select(ds, "topk", k=7, stratify=["question_type", "answer_text"])
    pairs = Counter((ds[p]["question_type"], ds[p]["answer_text"]) for p in res.positions)
    # 7 combinations exist (a, b, c with yes and no; d with one row): one item from each.
    assert len(res.ids) == 7 and len(pairs) == 7 and set(pairs.values()) == {1}
    # Within a combination the best score wins: a's best "no" is a08 (i=8 is a multiple of 4).
    assert "a08" in res.ids and "a09" in res.ids

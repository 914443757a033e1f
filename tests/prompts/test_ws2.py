"""The WS2 generator: deterministic, balanced, in-vocabulary, correctly labelled."""

from __future__ import annotations

from collections import Counter

import pytest

from circuitray.prompts.ws2 import CONSTRAINTS, VOCABULARY, candidates_for, generate_ws2


def test_same_seed_same_rows_and_other_seed_differs():
    a = generate_ws2(n=120, seed=3)
    b = generate_ws2(n=120, seed=3)
    c = generate_ws2(n=120, seed=4)
    assert a == b
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]
    # A longer corpus with the same seed starts with the shorter one.
    assert generate_ws2(n=200, seed=3)[:120] == a


def test_prompt_ids_unique_and_carry_seed():
    rows = generate_ws2(n=300, seed=7)
    ids = [r["prompt_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(pid.startswith("ws2-s7-") for pid in ids)
    assert all(r["seed"] == 7 for r in rows)


@pytest.mark.parametrize("n", [1, 2, 30, 100, 301])
def test_types_balanced(n):
    counts = Counter(r["constraint_type"] for r in generate_ws2(n=n, seed=0))
    assert sum(counts.values()) == n
    per_type = [counts.get(t, 0) for t in CONSTRAINTS]
    assert max(per_type) - min(per_type) <= 1


def test_types_subset():
    rows = generate_ws2(n=10, seed=0, types=["antonym", "simple_mapping"])
    counts = Counter(r["constraint_type"] for r in rows)
    assert counts == {"antonym": 5, "simple_mapping": 5}


def test_no_repeats_before_combinations_run_out():
    # Every type has at least 216 (template, subject, cue) combinations.
    rows = generate_ws2(n=600, seed=2)
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_word_in_vocabulary(seed):
    vocab = set(VOCABULARY)
    for r in generate_ws2(n=500, seed=seed):
        missing = [w for w in r["prompt"].split() if w not in vocab]
        assert not missing, (r["prompt"], missing)
        assert r["target"] in vocab
        assert r["cue"] in vocab
        assert all(c in vocab for c in r["candidates"])


def test_targets_follow_constraints():
    for r in generate_ws2(n=500, seed=11):
        c = CONSTRAINTS[r["constraint_type"]]
        assert r["target"] == c.mapping[r["cue"]]
        words = r["prompt"].split()
        assert r["cue"] in words
        template = c.templates[r["template_id"]]
        if "{subject}" in template:
            assert r["subject"] in words
            assert r["prompt"] == template.format(subject=r["subject"], cue=r["cue"])
        else:
            assert r["subject"] is None
            assert r["prompt"] == template.format(cue=r["cue"])
        assert r["candidates"] == candidates_for(r["constraint_type"])
        assert r["candidates"] == sorted(set(c.mapping.values()))
        assert r["target"] in r["candidates"]


def test_split_has_train_and_heldout_and_ignores_seed():
    splits: dict[tuple, str] = {}
    for seed in (0, 1, 2):
        rows = generate_ws2(n=300, seed=seed)
        counts = Counter(r["split"] for r in rows)
        assert set(counts) == {"train", "heldout"}
        assert 0.05 < counts["heldout"] / len(rows) < 0.45
        for r in rows:
            key = (r["constraint_type"], r["template_id"], r["subject"])
            assert splits.setdefault(key, r["split"]) == r["split"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown constraint type"):
        generate_ws2(n=3, types=["rhyme"])
    with pytest.raises(ValueError):
        generate_ws2(n=-1)
    assert generate_ws2(n=0) == []

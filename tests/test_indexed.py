"""Paired writer: lockstep token/metadata datasets, dtypes, add_index merges, temporary names."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_reflect.data.indexed import (PairedIndexedDataset, PairedWriter, check_pair, dataset_files,
                                           is_complete, meta_prefix, stats_path, tokens_prefix)
from megatron_reflect.errors import DataError


def docs(seed: int, n: int, vocab: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(1, 40))
        out.append((rng.integers(0, vocab, size=length), rng.integers(0, 20, size=length).astype(np.uint8)))
    return out


@pytest.mark.parametrize("vocab,dtype", [(49152, np.uint16), (151_000, np.int32)])
def test_lockstep_write_and_read(tmp_path, vocab, dtype):
    data = docs(0, 25, vocab)
    w = PairedWriter(tmp_path / "ds", vocab)
    for t, m in data:
        w.add(t, m)
    assert not is_complete(tmp_path / "ds")  # nothing visible before finalize
    assert not any(p.exists() for p in dataset_files(tmp_path / "ds"))
    w.finalize({"documents": len(data)})
    assert is_complete(tmp_path / "ds")
    assert not list(tmp_path.glob(".ds.tmp-*"))
    tokens, meta = check_pair(tmp_path / "ds")
    assert tokens.index.dtype == dtype and meta.index.dtype == np.uint8
    assert list(tokens.sequence_lengths) == [len(t) for t, _ in data]
    assert list(tokens.document_indices) == list(range(len(data) + 1))
    ds = PairedIndexedDataset(tmp_path / "ds")
    for i, (t, m) in enumerate(data):
        got_t, got_m = ds.document(i)
        assert np.array_equal(got_t, t) and np.array_equal(got_m, m)
        if len(t) > 3:
            assert np.array_equal(ds.get_meta(i, offset=1, length=2), m[1:3])
            assert np.array_equal(ds.get(i, offset=1, length=2), t[1:3])


def test_add_index_merges_shards(tmp_path):
    a, b = docs(1, 7, 1000), docs(2, 5, 1000)
    for name, data in (("a", a), ("b", b)):
        w = PairedWriter(tmp_path / name, 1000)
        for t, m in data:
            w.add(t, m)
        w.finalize({})
    w = PairedWriter(tmp_path / "merged", 1000)
    w.add_index(tmp_path / "a")
    w.add_index(tmp_path / "b")
    w.finalize({"documents": 12})
    ds = PairedIndexedDataset(tmp_path / "merged")
    assert len(ds) == 12
    for i, (t, m) in enumerate(a + b):
        assert np.array_equal(ds.document(i)[0], t) and np.array_equal(ds.document(i)[1], m)


def test_refuses_mismatch_and_abort_leaves_nothing(tmp_path):
    w = PairedWriter(tmp_path / "x", 1000)
    with pytest.raises(DataError, match="3 tokens and 2 metadata"):
        w.add(np.arange(3), np.zeros(2, np.uint8))
    w.add(np.arange(3), np.zeros(3, np.uint8))
    w.abort()
    assert not list(tmp_path.iterdir())
    # a metadata twin whose structure differs is refused
    for name, lengths in (("good", [3, 4]), ("bad", [3, 5])):
        w = PairedWriter(tmp_path / name, 1000)
        for n in lengths:
            w.add(np.arange(n), np.zeros(n, np.uint8))
        w.finalize({})
    for ext in (".bin", ".idx"):
        (tmp_path / ("good" + "_reflect_meta" + ext)).write_bytes((tmp_path / ("bad_reflect_meta" + ext)).read_bytes())
    with pytest.raises(DataError, match="differ in sequence lengths"):
        PairedIndexedDataset(tmp_path / "good")
    with pytest.raises(DataError, match="missing"):
        check_pair(tmp_path / "nothing")
    # a rewrite of an existing prefix first removes its stats: an interrupted rewrite is not complete
    assert stats_path(tmp_path / "bad").is_file()
    PairedWriter(tmp_path / "bad", 1000)
    assert not is_complete(tmp_path / "bad")
    assert IndexedDataset(tokens_prefix(tmp_path / "bad")).sequence_lengths.tolist() == [3, 5]
    assert IndexedDataset(meta_prefix(tmp_path / "bad")).index.dtype == np.uint8

"""Paired writer: lockstep token/metadata datasets, dtypes, add_index merges, temporary names;
the numpy .bin/.idx code is byte-identical to megatron-core's IndexedDatasetBuilder and read
back by megatron's IndexedDataset and GPTDataset."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_reflect.data.indexed import (IndexedReader, IndexedWriter, PairedIndexedDataset, PairedWriter,
                                           check_pair, dataset_files, is_complete, meta_prefix, optimal_token_dtype,
                                           stats_path, tokens_prefix)
from megatron_reflect.errors import DataError


def docs(seed: int, n: int, vocab: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(1, 40))
        out.append((rng.integers(0, vocab, size=length), rng.integers(0, 20, size=length).astype(np.uint8)))
    return out


@pytest.mark.parametrize("vocab", [1000, 49152, 65499, 65500, 151_000])
def test_byte_identical_to_megatron_builder(tmp_path, vocab):
    """Same documents through megatron-core's builder and ours (document by document, in flat
    batches, and merged with add_index): identical .bin and .idx bytes."""
    assert optimal_token_dtype(vocab) == DType.optimal_dtype(vocab)
    dtype = optimal_token_dtype(vocab)
    a, b = docs(1, 30, vocab), docs(2, 11, vocab)
    for name, data in (("a", a), ("b", b)):
        ref = IndexedDatasetBuilder(str(tmp_path / f"ref_{name}.bin"), dtype=DType.optimal_dtype(vocab))
        for t, _ in data:
            ref.add_document(t, [len(t)])
        ref.finalize(str(tmp_path / f"ref_{name}.idx"))
    ref = IndexedDatasetBuilder(str(tmp_path / "ref_ab.bin"), dtype=DType.optimal_dtype(vocab))
    ref.add_index(str(tmp_path / "ref_a"))
    ref.add_index(str(tmp_path / "ref_b"))
    ref.finalize(str(tmp_path / "ref_ab.idx"))

    one = IndexedWriter(tmp_path / "one_a.bin", dtype)
    for t, _ in a:
        one.add_documents(t, [len(t)])
    one.finalize(tmp_path / "one_a.idx")
    flat = IndexedWriter(tmp_path / "flat_b.bin", dtype)
    flat.add_documents(np.concatenate([t for t, _ in b[:4]]), [len(t) for t, _ in b[:4]])
    flat.add_documents(np.concatenate([t for t, _ in b[4:]]), [len(t) for t, _ in b[4:]])
    flat.finalize(tmp_path / "flat_b.idx")
    merged = IndexedWriter(tmp_path / "ours_ab.bin", dtype)
    merged.add_index(tmp_path / "ref_a")  # megatron's files appended by our writer
    merged.add_index(tmp_path / "flat_b")
    merged.finalize(tmp_path / "ours_ab.idx")
    for ours, theirs in (("one_a", "ref_a"), ("flat_b", "ref_b"), ("ours_ab", "ref_ab")):
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"{ours}{ext}").read_bytes() == (tmp_path / f"{theirs}{ext}").read_bytes(), ours + ext
    # megatron reads ours, we read megatron's: same values
    theirs, mine = IndexedDataset(str(tmp_path / "ours_ab")), IndexedReader(tmp_path / "ref_ab")
    assert mine.dtype == theirs.index.dtype and len(mine) == len(theirs) == 41
    assert np.array_equal(mine.sequence_lengths, theirs.sequence_lengths)
    assert np.array_equal(mine.document_indices, theirs.document_indices)
    assert np.array_equal(mine.sequence_pointers, theirs.index.sequence_pointers)
    for i, (t, _) in enumerate(a + b):
        assert np.array_equal(theirs[i], t) and np.array_equal(mine[i], t)
        if len(t) > 3:
            assert np.array_equal(mine.get(i, offset=1, length=2), theirs.get(i, offset=1, length=2))
            assert np.array_equal(IndexedReader(tmp_path / "ref_ab", mmap=False).get(i, 2), t[2:])


def test_gptdataset_reads_our_files(tmp_path):
    """megatron-core's GPTDataset (over its own IndexedDataset) and our ReflectGPTDataset (over the numpy
    reader) built on the same files give identical samples: training sees the same data."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from megatron_reflect.data.dataset import DataConfig, DatasetTokenizer, _gpt_config, build_reflect_datasets

    desc = {"type": "synthetic", "model": None, "vocab_size": 1000, "eod_id": 999, "pad_id": None}
    data = [(np.append(t % 999, 999), np.append(m, 0).astype(np.uint8)) for t, m in docs(3, 80, 999)]
    w = PairedWriter(tmp_path / "g", 1000)
    for t, m in data:
        w.add(t, m)
    w.finalize({"tokenizer": desc})
    cfg = DataConfig(blend=[str(tmp_path / "g")], split="90,10,0", seq_length=16, cache_dir=str(tmp_path / "cache"))
    ours = build_reflect_datasets(cfg, (40, 8, 0))
    stock = _gpt_config(cfg, DatasetTokenizer(desc))
    stock.blend = ([tokens_prefix(tmp_path / "g")], None)  # the token half, as a stock Megatron dataset
    theirs = BlendedMegatronDatasetBuilder(GPTDataset, [40, 8, 0], lambda: True, stock).build()
    assert isinstance(theirs[0].dataset, IndexedDataset)
    n = 0
    for a, b in zip(ours[:2], theirs[:2]):
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            sa, sb = a[i], b[i]
            for key in ("tokens", "labels", "loss_mask", "position_ids"):
                assert np.array_equal(sa[key].numpy(), sb[key].numpy()), (i, key)
            n += 1
    assert n >= 48
    stream = np.concatenate([t for t, _ in data])
    assert int(ours[0].dataset.sequence_lengths.sum()) == len(stream)


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
    assert tokens.dtype == dtype and meta.dtype == np.uint8
    assert list(tokens.sequence_lengths) == [len(t) for t, _ in data]
    assert list(tokens.document_indices) == list(range(len(data) + 1))
    ds = PairedIndexedDataset(tmp_path / "ds")
    ds = pickle.loads(pickle.dumps(ds))  # dataloader workers reopen by path
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
    # a truncated .bin or a file that is no index is refused, naming the file
    bin_path = tmp_path / "bad_text_document.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(DataError, match="index and data disagree"):
        IndexedReader(tokens_prefix(tmp_path / "bad"))
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, really not one")
    (tmp_path / "junk.bin").write_bytes(b"")
    with pytest.raises(DataError, match="junk.idx: not a Megatron index"):
        IndexedReader(tmp_path / "junk")
    # a rewrite of an existing prefix first removes its stats: an interrupted rewrite is not complete
    assert stats_path(tmp_path / "bad").is_file()
    PairedWriter(tmp_path / "bad", 1000)
    assert not is_complete(tmp_path / "bad")
    assert IndexedDataset(meta_prefix(tmp_path / "bad")).index.dtype == np.uint8


def test_resumable_writer_commits_truncates_and_matches(tmp_path):
    """Committed chunks survive a writer that is dropped mid-chunk; the uncommitted tail is cut; the
    result equals PairedWriter's bytes; another key starts over."""
    from megatron_reflect.data.indexed import ResumablePairedWriter

    data = docs(4, 12, 49152)
    flat = lambda part: (np.concatenate([t for t, _ in part]), np.concatenate([m for _, m in part]),  # noqa: E731
                         np.array([len(t) for t, _ in part]))
    w = ResumablePairedWriter(tmp_path / "r", 49152, {"k": 1})
    w.add(*flat(data[:5]))
    w.commit({"upto": 5})
    w.add(*flat(data[5:8]))  # never committed: the "kill" happens now
    w.close()
    again = ResumablePairedWriter(tmp_path / "r", 49152, {"k": 1})
    assert again.state == {"upto": 5} and again.documents == 5
    assert (tmp_path / "r.partial" / "lengths.bin").stat().st_size == 5 * 4  # the tail was cut
    again.add(*flat(data[5:]))
    again.finalize({"documents": 12})
    ref = PairedWriter(tmp_path / "p", 49152)
    for t, m in data:
        ref.add(t, m)
    ref.finalize({})
    for a, b in zip(dataset_files(tmp_path / "r"), dataset_files(tmp_path / "p")):
        assert a.read_bytes() == b.read_bytes()
    assert is_complete(tmp_path / "r") and not (tmp_path / "r.partial").exists()
    w = ResumablePairedWriter(tmp_path / "s", 49152, {"k": 1})
    w.add(*flat(data[:2]))
    w.commit({"upto": 2})
    w.close()
    other = ResumablePairedWriter(tmp_path / "s", 49152, {"k": 2})  # other settings: its commit does not apply
    assert other.state is None and other.discarded and other.documents == 0
    other.close()
    assert ResumablePairedWriter(tmp_path / "s", 49152, {"k": 2}, resume=False).state is None

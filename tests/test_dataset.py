"""ReflectGPTDataset: metadata aligned with labels over every sample of packed, blended, split data.

The data are built so that each token id encodes its own metadata code (``code_of``), so any
shift, swap or mix-up between the token stream and the metadata stream is detectable at every
position of every sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from megatron_reflect.data.dataset import DataConfig, ReflectGPTDataset, build_reflect_datasets, read_dataset_info
from megatron_reflect.data.indexed import PairedWriter
from megatron_reflect.errors import DataError
from megatron_reflect.reflection import VERDICT_FLAG

VOCAB = 5000
EOD = 4999


def code_of(tokens: np.ndarray) -> np.ndarray:
    """Metadata code implied by a token id: kind = id % 4, verdict flag when id % 7 == 0."""
    t = tokens.astype(np.int64)
    code = (t % 4) | np.where(t % 7 == 0, VERDICT_FLAG, 0)
    return np.where(t == EOD, 0, code).astype(np.uint8)


def write_dataset(prefix, n_docs: int, seed: int, offset: int) -> int:
    rng = np.random.default_rng(seed)
    writer = PairedWriter(prefix, VOCAB)
    total = 0
    for _ in range(n_docs):
        body = rng.integers(offset, offset + 2000, size=int(rng.integers(1, 60)))
        tokens = np.append(body, EOD)
        writer.add(tokens, code_of(tokens))
        total += len(tokens)
    writer.finalize({"tokenizer": {"type": "synthetic", "model": None, "vocab_size": VOCAB, "eod_id": EOD,
                                   "pad_id": None}, "documents": n_docs, "tokens": total})
    return total


def check_every_sample(ds) -> int:
    n = 0
    for i in range(len(ds)):
        s = ds[i]
        labels = s["labels"].numpy()
        meta = s["reflection_meta"].numpy()
        assert meta.dtype == np.uint8 and meta.shape == labels.shape
        real = s["loss_mask"].numpy() > 0
        mismatches = np.count_nonzero(meta[real] != code_of(labels[real]))
        assert mismatches == 0, f"sample {i}: {mismatches} misaligned positions"
        assert np.all(meta[~real] == 0)
        n += 1
    return n


def test_blend_split_every_sample_aligned(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tokens_a = write_dataset(a, 300, seed=1, offset=0)
    write_dataset(b, 200, seed=2, offset=2500)
    cfg = DataConfig(blend=["30", str(a), "70", str(b) + "_text_document"], split="80,20,0", seq_length=64,
                     cache_dir=str(tmp_path / "cache"))
    train, valid, test = build_reflect_datasets(cfg, (400, 60, 0))
    assert test is None
    assert len(train) >= 400 and len(valid) >= 60
    sample = train[0]
    assert set(sample) >= {"tokens", "labels", "loss_mask", "position_ids", "reflection_meta", "dataset_id"}
    assert check_every_sample(train) == len(train)
    assert check_every_sample(valid) == len(valid)
    # samples of both datasets, packed across documents (EOD inside samples)
    ids = {int(train[i]["dataset_id"]) for i in range(len(train))}
    assert ids == {0, 1}
    assert any((train[i]["tokens"] == EOD).any() for i in range(10))
    # the reflection codes actually vary (the check is not vacuous)
    assert len(np.unique(np.concatenate([train[i]["reflection_meta"].numpy() for i in range(20)]))) >= 6
    # the index cache is written and reused: a second build gives identical samples
    cached = list((tmp_path / "cache").rglob("*ReflectGPTDataset*sample_index.npy"))
    assert cached
    train2, _, _ = build_reflect_datasets(cfg, (400, 60, 0))
    for i in range(0, len(train), 37):
        assert np.array_equal(train[i]["tokens"].numpy(), train2[i]["tokens"].numpy())
        assert np.array_equal(train[i]["reflection_meta"].numpy(), train2[i]["reflection_meta"].numpy())
    assert read_dataset_info(a)["tokens"] == tokens_a


def test_single_dataset_covers_all_tokens(tmp_path):
    """One dataset, one epoch: the train samples tile the token stream, metadata included."""
    p = tmp_path / "one"
    write_dataset(p, 50, seed=3, offset=0)
    cfg = DataConfig(blend=[str(p)], split="100,0,0", seq_length=32, cache_dir=str(tmp_path / "c"))
    train, valid, _ = build_reflect_datasets(cfg, (10, 0, 0))
    assert isinstance(train, ReflectGPTDataset) and valid is None
    assert check_every_sample(train) == len(train)


def test_incomplete_dataset_is_refused(tmp_path):
    p = tmp_path / "x"
    write_dataset(p, 5, seed=0, offset=0)
    (tmp_path / "x_stats.json").unlink()
    with pytest.raises(DataError, match="x_stats.json"):
        build_reflect_datasets(DataConfig(blend=[str(p)], split="100,0,0"), (4, 0, 0))


def write_segmented(prefix, n_docs: int, seed: int) -> None:
    """Documents of 1-3 segments; each segment is text then a 4-token reflection whose first token
    carries the verdict flag.  Reflection tokens are ids 4000-4003, text ids below 4000."""
    rng = np.random.default_rng(seed)
    writer = PairedWriter(prefix, VOCAB)
    for _ in range(n_docs):
        tokens, meta = [], []
        for _ in range(int(rng.integers(1, 4))):
            body = rng.integers(0, 4000, size=int(rng.integers(5, 40))).tolist()
            kind = int(rng.integers(1, 3))
            tokens += body + [4000, 4001, 4002, 4003]
            meta += [0] * len(body) + [kind | VERDICT_FLAG, kind, kind, kind]
        writer.add(np.array(tokens + [EOD]), np.array(meta + [0], dtype=np.uint8))
    writer.finalize({"tokenizer": {"type": "synthetic", "model": None, "vocab_size": VOCAB, "eod_id": EOD,
                                   "pad_id": None}, "documents": n_docs, "tokens": 0})


def test_mask_cut_reflections_leaves_no_verdict_without_its_segment(tmp_path):
    from megatron_reflect.data.dataset import unanchored_verdicts

    p = tmp_path / "seg"
    write_segmented(p, 400, seed=4)
    built = {}
    for mask in (False, True):
        cfg = DataConfig(blend=[str(p)], split="100,0,0", seq_length=48, cache_dir=str(tmp_path / "c"),
                         mask_cut_reflections=mask)
        built[mask] = build_reflect_datasets(cfg, (600, 0, 0))[0]
    plain, masked = built[False], built[True]
    unanchored = unanchored_verdicts(plain, range(len(plain)))
    assert unanchored > 50  # packing does cut segments
    assert unanchored_verdicts(masked, range(len(masked))) == 0
    cut = dropped_verdicts = 0
    for i in range(len(plain)):
        a, b = plain[i], masked[i]
        assert np.array_equal(a["tokens"].numpy(), b["tokens"].numpy())
        dropped = (a["loss_mask"].numpy() > 0) & (b["loss_mask"].numpy() == 0)
        assert (b["loss_mask"].numpy() <= a["loss_mask"].numpy()).all()
        # only reflection tokens lose their loss, and only in the sample's first document part
        assert (b["reflection_meta"].numpy()[dropped] & 0x03 != 0).all()
        dropped_verdicts += int((b["reflection_meta"].numpy()[dropped] & VERDICT_FLAG != 0).sum())
        if dropped.any():
            first_eod = np.flatnonzero(a["tokens"].numpy() == EOD)
            assert not len(first_eod) or np.flatnonzero(dropped).max() < first_eod[0]
            cut += 1
    assert cut > 50
    assert dropped_verdicts == unanchored  # exactly the unanchored verdicts lost their loss, no others

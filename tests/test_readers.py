"""Readers: jsonl/.gz/.zst/parquet streamed, ids kept, every kind of bad record -> Skipped."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_reflect.data.readers import START, Skipped, iter_positioned, iter_records
from megatron_reflect.data.types import Document
from megatron_reflect.errors import DataError

GOOD = [{"id": "a", "text": "First doc.", "title": "T1"}, {"text": "Second doc.", "title": "T2"}]


def _bad_lines() -> bytes:
    lines = [json.dumps(GOOD[0]).encode(), json.dumps(GOOD[1]).encode(),
             b'{"text": "unterminated',                      # 3 malformed JSON
             json.dumps({"id": "m", "title": "no text"}).encode(),  # 4 missing key
             json.dumps({"text": "   \n "}).encode(),         # 5 empty text
             b'{"text": "bad \xff utf8"}',                    # 6 invalid UTF-8
             json.dumps({"text": "x" * 500}).encode(),        # 7 over the limit
             b"",                                             # 8 blank line: not a record
             json.dumps([1, 2]).encode(),                     # 9 not an object
             json.dumps({"text": 42}).encode(),               # 10 not a string
             json.dumps({"id": 7, "text": "Last."}).encode()]  # 11
    return b"\n".join(lines) + b"\n"


def _check(items, path):
    docs = [i for i in items if isinstance(i, Document)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [(d.doc_id, d.text, d.line, d.fields) for d in docs] == [
        ("a", "First doc.", 1, {"id": "a", "title": "T1"}),
        (f"{path.name}:2", "Second doc.", 2, {"title": "T2"}),
        ("7", "Last.", 11, {"id": 7})]
    assert [(s.line, s.reason.split(":")[0].split(" at ")[0]) for s in skipped] == [
        (3, "malformed JSON"), (4, "missing key 'text'"), (5, "empty text"), (6, "invalid UTF-8"),
        (7, "document of 500 characters exceeds the limit of 100"), (9, "record is a JSON list, not an object"),
        (10, "key 'text' is a int, not a string")]
    assert all(s.source == str(path) for s in skipped)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_variants_with_bad_records(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    data = _bad_lines()
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    _check(list(iter_records(path, max_chars=100)), path)


def test_multiple_json_keys_joined(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": 1, "title": "Head", "text": "Body."}) + "\n"
                    + json.dumps({"id": 2, "text": "No title."}) + "\n")
    items = list(iter_records(path, json_keys=("title", "text")))
    assert items[0].text == "Head\n\nBody." and items[0].fields == {"id": 1}
    assert items[1] == Skipped(str(path), 2, "missing key 'title'")


def test_parquet_streamed(tmp_path):
    path = tmp_path / "c.parquet"
    rows = [{"id": f"p{i}", "text": f"Doc {i}." if i != 3 else None, "n": i} for i in range(2500)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    items = list(iter_records(path))
    assert len(items) == 2500
    assert items[3] == Skipped(str(path), 4, "missing key 'text'")
    assert (items[2499].doc_id, items[2499].text, items[2499].line, items[2499].fields) == ("p2499", "Doc 2499.", 2500,
                                                                                            {"id": "p2499", "n": 2499})


def test_strict_error_and_file_errors(tmp_path):
    s = Skipped("f.jsonl", 3, "empty text")
    with pytest.raises(DataError, match=r"f.jsonl:3: empty text"):
        raise s.error()
    with pytest.raises(DataError, match="no such corpus file"):
        iter_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown corpus file format"):
        iter_records(tmp_path / "x.csv")
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), tmp_path / "y.parquet")
    with pytest.raises(DataError, match=r"no column \['text'\]"):
        list(iter_records(tmp_path / "y.parquet"))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_resume_from_any_position_yields_the_rest(tmp_path, suffix):
    """Restarting after the position of record k yields exactly records k+1.. (with their lines)."""
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".parquet":
        rows = [{"id": f"p{i}", "text": f"Doc {i}." if i != 3 else None} for i in range(2100)]
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    else:
        data = _bad_lines()
        data = gzip.compress(data) if suffix.endswith(".gz") else (
            zstandard.ZstdCompressor().compress(data) if suffix.endswith(".zst") else data)
        path.write_bytes(data)
    full = list(iter_positioned(path, max_chars=100))
    assert [p.records for _, p in full] == list(range(1, len(full) + 1))
    assert [r for r, _ in full] == list(iter_records(path, max_chars=100))
    ks = range(len(full)) if suffix != ".parquet" else (0, 1, 699, 700, 1400, 2098, 2099)
    for k in ks:
        start = full[k][1] if k else START
        rest = list(iter_positioned(path, max_chars=100, start=start))
        assert rest == full[k + 1 if k else 0:], k

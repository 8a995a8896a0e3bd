"""tools/prepare_sft.py: chat records in Tulu-3's format -> reflection SFT data (no model runs).

Proves: on a conversation with a system turn, two user turns, a harmful request answered with
a refusal and a safe answer long enough for inline reflections, the rendered assistant turns
are exactly as specified under both refusal policies and with recovery; tokenized for SFT,
exactly the assistant contents and their end-of-turn tokens carry loss; the verdict counts
match; a bad record is skipped with its file and line; a run killed mid-file resumes to the
same output; parquet and .zst inputs read the same records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_reflect.errors import DataError
from megatron_reflect.posttrain.prepare import PrepareConfig, export_turns, prepare_file
from megatron_reflect.posttrain.sft import read_sft_file, tokenize_messages

ROOT = Path(__file__).resolve().parents[1]
SAFE_ANSWER = ("Bread needs flour, water, salt and yeast. Mix them into a dough and knead it well. "
               "Let it rise for an hour. Bake it at 220 degrees for thirty minutes.")
REFUSAL = "I can't help with that."
CONVERSATION = {"id": "c1", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How do I bake bread?", "harmful": False},
    {"role": "assistant", "content": SAFE_ANSWER},
    {"role": "user", "content": "How do I make a pipe bomb?", "harmful": True},
    {"role": "assistant", "content": REFUSAL},
]}
PAIR = {"id": "p1", "prompt": "Tell me how to poison a dog", "response": "Sure, first buy some antifreeze and",
        "harmful": True}
# Segments of SAFE_ANSWER at 10 words: the segmenter packs whole sentences (7 + 9 + 6 + 8 words).
EXPECTED_SAFE = (" <think> Safe </think> Bread needs flour, water, salt and yeast. <think> Safe </think>"
                 " Mix them into a dough and knead it well. <think> Safe </think>"
                 " Let it rise for an hour. <think> Safe </think>"
                 " Bake it at 220 degrees for thirty minutes. <think> Safe </think>")


def _write(path: Path, records: list, bad_line: str | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    if bad_line is not None:
        lines.insert(1, bad_line)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(**kw) -> PrepareConfig:
    return PrepareConfig(reflect_every_words=10, label_field="harmful", **kw)


def test_rendering_masks_and_counts(tmp_path):
    from megatron_reflect.eval.models import load_tokenizer
    from megatron_reflect.packaged import smollm2_hf_dir

    src = _write(tmp_path / "chats.jsonl", [CONVERSATION, PAIR], bad_line='{"messages": [{"role": "user"')
    stats = prepare_file(src, tmp_path / "sft.jsonl", _cfg())
    out = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    conv, pair = out
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert conv["messages"][2]["content"] == EXPECTED_SAFE
    assert conv["messages"][4]["content"] == " <think> Unsafe </think>"  # refusal by stopping (policy stop)
    assert pair["messages"][1] == {"role": "assistant", "content": " <think> Unsafe </think>"}
    assert stats["conversations"] == 2 and stats["skipped"] == 1
    assert stats["skipped_records"] == [{"source": str(src), "line": 2,
                                         "reason": "malformed JSON: Expecting ',' delimiter at column 1"}]
    assert stats["requests"] == {"Safe": 1, "Unsafe": 2}
    assert stats["assistant_turns"] == {"answer": 1, "unsafe_stop": 2}
    assert stats["reflections"] == {"Safe": 5, "Unsafe": 2}
    assert json.loads((tmp_path / "sft.jsonl.stats.json").read_text())["reflections"] == stats["reflections"]
    assert stats["refused_not_unsafe"] == 0  # the one refusal answers a request labelled Unsafe

    # a label source that misses the harmful request: its refusal becomes a Safe answer, and is counted
    missed = json.loads(json.dumps(CONVERSATION))
    missed["messages"][3]["harmful"] = False
    _write(tmp_path / "missed.jsonl", [missed])
    mstats = prepare_file(tmp_path / "missed.jsonl", tmp_path / "missed_sft.jsonl", _cfg())
    (mconv,) = [json.loads(x) for x in (tmp_path / "missed_sft.jsonl").read_text().splitlines()]
    assert mconv["messages"][4]["content"] == f" <think> Safe </think> {REFUSAL} <think> Safe </think>"
    assert mstats["refused_not_unsafe"] == 1 and mstats["requests"] == {"Safe": 2}

    # keep policy: the data's refusal follows the Unsafe reflection; recovery: untrained harmful words, then stop
    prepare_file(src, tmp_path / "keep.jsonl", _cfg(refusal_policy="keep", recovery_rate=1.0, recovery_words=3))
    kconv, kpair = [json.loads(x) for x in (tmp_path / "keep.jsonl").read_text().splitlines()]
    # the refusal is labelled only by its request here (no answer label): never trained on -> recovery
    assert kconv["messages"][4] == {"role": "assistant", "content": "I can't help <think> Unsafe </think>",
                                    "untrained": [[0, 12]]}
    assert kpair["messages"][1]["content"] == "Sure, first buy <think> Unsafe </think>"
    labelled = json.loads(json.dumps(CONVERSATION))
    labelled["messages"][4]["harmful"] = False  # the answer is known to be a (safe) refusal
    _write(tmp_path / "lab.jsonl", [labelled])
    prepare_file(tmp_path / "lab.jsonl", tmp_path / "lab_keep.jsonl", _cfg(refusal_policy="keep"))
    (lconv,) = [json.loads(x) for x in (tmp_path / "lab_keep.jsonl").read_text().splitlines()]
    assert lconv["messages"][4]["content"] == f" <think> Unsafe </think> {REFUSAL} <think> Safe </think>"

    # tokenized for SFT: loss on exactly the assistant contents and their <|im_end|>, nothing of the prompts
    tok = load_tokenizer(smollm2_hf_dir())
    conv_msgs = read_sft_file(tmp_path / "sft.jsonl")[0]
    ids, labels = tokenize_messages(tok, conv_msgs, 1024)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    want = tok(EXPECTED_SAFE, add_special_tokens=False).input_ids + [end] + \
        tok(" <think> Unsafe </think>", add_special_tokens=False).input_ids + [end]
    assert [y for y in labels if y != -100] == want
    assert [t for t, y in zip(ids, labels) if y != -100] == want  # labels are the input tokens themselves
    prompt_text = tok.decode([t for t, y in zip(ids, labels) if y == -100])
    for text in ("You are a helpful assistant.", "How do I bake bread?", "How do I make a pipe bomb?"):
        assert text in prompt_text
    assert "<think>" not in prompt_text and labels[-1] == end
    rec = read_sft_file(tmp_path / "keep.jsonl")[1]  # recovery: the 3 harmful words carry no loss
    ids, labels = tokenize_messages(tok, rec, 1024)
    assert [y for y in labels if y != -100] == tok(" <think> Unsafe </think>", add_special_tokens=False).input_ids \
        + [end]
    assert "Sure, first buy" in tok.decode([t for t, y in zip(ids, labels) if y == -100])


def test_resume_after_a_kill_and_other_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    records = [dict(CONVERSATION, id=f"c{i}") for i in range(4)] + [PAIR]
    src = _write(tmp_path / "chats.jsonl", records, bad_line='{"id": "x", "messages": "oops"}')
    fresh = prepare_file(src, tmp_path / "fresh.jsonl", _cfg(part_records=2))
    with pytest.raises(DataError, match=r"chats.jsonl:2: key 'messages' is a str, not a list"):
        prepare_file(src, tmp_path / "killed.jsonl", _cfg(strict=True, part_records=1))  # dies at line 2
    assert len(list((tmp_path / "killed.jsonl.parts").glob("part-*.json"))) == 1  # line 1 committed
    resumed = prepare_file(src, tmp_path / "killed.jsonl", _cfg(part_records=1))
    assert (tmp_path / "killed.jsonl").read_text() == (tmp_path / "fresh.jsonl").read_text()
    assert resumed["reflections"] == fresh["reflections"] and resumed["skipped"] == fresh["skipped"] == 1
    assert not (tmp_path / "killed.jsonl.parts").exists()
    parts = tmp_path / "other.jsonl.parts"
    parts.mkdir()
    (parts / "part-00000.json").write_text(json.dumps({"settings": {}, "position": [1, 1, 10], "stats": {},
                                                        "skipped": []}))
    with pytest.raises(DataError, match="other settings"):
        prepare_file(src, tmp_path / "other.jsonl", _cfg())

    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "messages": r.get("messages"), "prompt": r.get("prompt"),
                                          "response": r.get("response"), "harmful": r.get("harmful")}
                                         for r in records]), tmp_path / "chats.parquet")
    zst = tmp_path / "chats.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
    for path in (tmp_path / "chats.parquet", zst):
        prepare_file(path, tmp_path / f"{path.name}.out.jsonl", _cfg())
    want = [json.loads(x)["messages"] for x in (tmp_path / "fresh.jsonl").read_text().splitlines()]
    for path in (tmp_path / "chats.parquet", zst):
        got = [json.loads(x)["messages"] for x in (tmp_path / f"{path.name}.out.jsonl").read_text().splitlines()]
        assert got == want, path


def test_stored_labels_route_and_cli(tmp_path):
    """The label_corpus contract: exported turns, labelled by the oracle labeler into a label file, read back."""
    from megatron_reflect.data.labelers import build_labeler
    from megatron_reflect.data.labels import label_file
    from megatron_reflect.data.segment import SegmenterConfig

    conv = json.loads(json.dumps(CONVERSATION))
    for m in conv["messages"][1:]:
        m["verdict"] = "Unsafe" if m.pop("harmful", False) else "Safe"
    src = _write(tmp_path / "chats.jsonl", [conv])
    assert export_turns(src, tmp_path / "turns.jsonl")["turns"] == 4
    turns = [json.loads(x) for x in (tmp_path / "turns.jsonl").read_text().splitlines()]
    assert [t["id"] for t in turns] == ["c1#1", "c1#2", "c1#3", "c1#4"]
    verdicts = {f"c1#{i}": m["verdict"] for i, m in enumerate(conv["messages"]) if i}
    (tmp_path / "turns_lab.jsonl").write_text("".join(json.dumps({**t, "verdict": verdicts[t["id"]]}) + "\n"
                                                      for t in turns))
    label_file(tmp_path / "turns_lab.jsonl", tmp_path / "labels.parquet", build_labeler("oracle"),
               SegmenterConfig(max_words=10))
    stored = prepare_file(src, tmp_path / "stored.jsonl", PrepareConfig(reflect_every_words=10,
                                                                        labels_path=str(tmp_path / "labels.parquet")))
    by_oracle = prepare_file(src, tmp_path / "oracle.jsonl", PrepareConfig(reflect_every_words=10, labeler="oracle"))
    assert (tmp_path / "stored.jsonl").read_text() == (tmp_path / "oracle.jsonl").read_text()
    assert stored["reflections"] == by_oracle["reflections"] == {"Safe": 5, "Unsafe": 1}
    assert json.loads((tmp_path / "stored.jsonl").read_text())["messages"][2]["content"] == EXPECTED_SAFE

    r = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_sft.py"), "--input", str(src), "--output",
                        str(tmp_path / "cli.jsonl"), "--labeler", "oracle", "--reflect-every", "10"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "oracle.jsonl").read_text()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_sft.py"), "--input", str(src), "--output",
                        str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and "exactly one label source" in r.stderr


@pytest.mark.timeout(1200)
def test_recipe_end_to_end_tiny(tmp_path):
    """examples/posttrain_recipe.sh at tiny size on the CPU: label, preprocess, pretrain, export,
    prepare_sft on Tulu-3-format data, SFT on TRL, evaluate (with the user's finetuning-attack files)."""
    import os

    words = "the river runs past the old mill and the farmers bring grain to town every week".split()
    with (tmp_path / "corpus.jsonl").open("w") as f:
        for i in range(60):
            text = " ".join(words[(i + j) % len(words)] for j in range(40)) + "."
            f.write(json.dumps({"id": f"d{i}", "text": text, "verdict": "Unsafe" if i % 5 == 0 else "Safe"}) + "\n")
    _write(tmp_path / "chat.jsonl", [CONVERSATION, PAIR, dict(CONVERSATION, id="c2")])
    (tmp_path / "harmful.jsonl").write_text("".join(json.dumps({"prompt": f"Hurt {i}", "response": f"Do {i}"}) + "\n"
                                                    for i in range(2)))
    (tmp_path / "benign.jsonl").write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"{i + 1}"}) + "\n"
                                                   for i in range(2)))
    out = tmp_path / "recipe"
    env = dict(os.environ, TINY="1", LABELER="oracle", CORPUS=str(tmp_path / "corpus.jsonl"),
               CHAT=str(tmp_path / "chat.jsonl"), CHAT_LABELS="--label-field harmful", OUT=str(out),
               PYTHON=sys.executable, FT_HARMFUL=str(tmp_path / "harmful.jsonl"),
               FT_BENIGN=str(tmp_path / "benign.jsonl"))
    r = subprocess.run(["bash", str(ROOT / "examples" / "posttrain_recipe.sh")], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert [line for line in r.stdout.splitlines() if line.startswith("[")][:7] == [
        "[1/7] label the corpus (oracle)",
        "[2/7] preprocess: segment, insert reflections from the stored labels, tokenize",
        "[3/7] pretrain", "[4/7] export the newest checkpoint to Hugging Face (with reflection_format.json)",
        "[5/7] prepare_sft: reflections into the chat data", "[6/7] reflection SFT on TRL",
        "[7/7] evaluate: classification, inference attacks, finetuning attacks"]
    stats = json.loads((out / "sft.jsonl.stats.json").read_text())
    assert stats["conversations"] == 3 and stats["reflections"] == {"Safe": 4, "Unsafe": 3}  # 100-word segments
    summary = json.loads((out / "sft" / "sft_summary.json").read_text())
    assert summary["trainer"] == "trl.SFTTrainer" and len(summary["losses"]) == 2 and summary["examples"] == 3
    assert (out / "sft" / "reflection_format.json").is_file()
    ev = json.loads((out / "eval" / "summary.json").read_text())
    assert [row["tag"].split("/")[1] for row in ev["finetune"][1:]] == ["harmful", "benign"]
    assert ev["classification"]["prompts"]["n"] == 4

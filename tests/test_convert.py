"""Checkpoint conversion Megatron <-> Hugging Face.

* real weights: SmolLM2-135M-Instruct (packaged GGUF -> HF) -> import at TP=1 and TP=3 ->
  Megatron forward on CPU -> export -> HF: logits within 1e-4 of the original model's,
  exported tensors bit-identical, and plain ``AutoModelForCausalLM`` generates the same ids;
* random tiny Llama models (tied/untied, GQA/MHA, padded vocabulary, TP=2 / PP=2, several
  shards, bf16) round-trip bit-exactly (SmolLM2-135M's 9 heads / 3 KV groups rule out TP=2);
* bad input fails with a ConversionError naming the problem and leaves no output behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from megatron_reflect.convert import export_checkpoint, import_hf, read_reflection_format
from megatron_reflect.convert.mapping import LAYER_RULES, to_hf, to_megatron
from megatron_reflect.convert.verify import compare_logits, fixed_batch, hf_logits, megatron_logits
from megatron_reflect.errors import ConversionError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.reflection import DEFAULT_TEMPLATE

TOLERANCE = 1e-4


def _hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if name in p.name], list(parent.iterdir())


# ---- the mapping itself -------------------------------------------------------------------


def test_qkv_is_interleaved_per_kv_group_and_fc1_is_gate_then_up() -> None:
    cfg = ModelConfig(hidden_size=8, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=6)  # head_dim 2
    qkv = next(r for r in LAYER_RULES if r.fuse == "qkv").at(0)
    q = torch.arange(8.0)[:, None].expand(8, 8) + 100  # rows 100..107: heads 0-3, 2 rows each
    k = torch.arange(4.0)[:, None].expand(4, 8) + 200  # groups 0-1
    v = torch.arange(4.0)[:, None].expand(4, 8) + 300
    fused = to_megatron(qkv, [q, k, v], cfg, padded_vocab=0)
    # group 0: q heads 0,1 (rows 100-103), k0 (200,201), v0 (300,301); then group 1
    assert fused[:, 0].tolist() == [100, 101, 102, 103, 200, 201, 300, 301,
                                    104, 105, 106, 107, 202, 203, 302, 303]
    assert all(torch.equal(x, y) for x, y in zip(to_hf(qkv, fused, cfg), [q, k, v]))
    fc1 = next(r for r in LAYER_RULES if r.fuse == "gate_up").at(3)
    gate, up = torch.randn(6, 8), torch.randn(6, 8)
    fused = to_megatron(fc1, [gate, up], cfg, padded_vocab=0)
    assert torch.equal(fused[:6], gate) and torch.equal(fused[6:], up)
    assert fc1.hf == ("model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.up_proj.weight")


# ---- random tiny models: bit-exact round trips --------------------------------------------


def _tiny_tokenizer(vocab: int):
    """A byte-level BPE tokenizer of at most ``vocab`` tokens (EOD ``<|endoftext|>`` = 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog. <think> Safe </think>"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _tiny_hf_dir(path: Path, tied: bool, kv_heads: int, vocab: int = 300, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, rope_theta=50000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=tied, max_position_embeddings=256,
                      bos_token_id=None, eos_token_id=0, pad_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # norms too: a swapped name must show
            p.normal_(0.0, 0.5)
    model.save_pretrained(str(path))
    _tiny_tokenizer(vocab).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory) -> tuple[Path, Path]:
    """Tied, GQA, vocabulary 300 (padded for TP=2), imported at TP=2."""
    root = tmp_path_factory.mktemp("tiny_tied")
    src = _tiny_hf_dir(root / "hf", tied=True, kv_heads=2, vocab=300)
    return src, import_hf(src, root / "ckpt", tp=2)


def _check_round_trip(src: Path, ckpt: Path, out_root: Path, vocab: int, tied: bool, tp: int) -> None:
    from transformers import AutoTokenizer

    from megatron_reflect.convert.tensor_io import DistWeights

    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 0 and meta["tokenizer"]["model"] == str(src.resolve())
    assert meta["tokenizer"]["vocab_size"] == len(AutoTokenizer.from_pretrained(str(src))) <= vocab
    assert meta["tokenizer"]["eod_id"] == 0
    emb = DistWeights(ckpt / "dist").read("model.embedding.word_embeddings.weight")
    padded = ModelConfig(vocab_size=vocab).padded_vocab_size(tp)
    assert padded > vocab and emb.shape[0] == padded and not emb[vocab:].any()  # zero padding rows

    out = export_checkpoint(ckpt, out_root / "out", max_shard_bytes=200_000)
    original, exported = _hf_tensors(src), _hf_tensors(out)
    _assert_identical(original, exported)
    assert ("lm_head.weight" in exported) is not tied
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    a, b = (json.loads((d / "config.json").read_text()) for d in (src, out))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_parameters", "rms_norm_eps", "tie_word_embeddings", "eos_token_id"):
        assert a[key] == b[key], key
    tokens = fixed_batch(vocab, 2, 8)
    assert torch.equal(hf_logits(src, tokens), hf_logits(out, tokens))

    half = export_checkpoint(ckpt, out_root / "bf16", dtype="bfloat16")
    _assert_identical({k: v.to(torch.bfloat16) for k, v in original.items()}, _hf_tensors(half))
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"


def test_tiny_tied_gqa_padded_tp2_round_trip_is_bit_exact(tiny_tied: tuple[Path, Path], tmp_path: Path) -> None:
    src, ckpt = tiny_tied
    _check_round_trip(src, ckpt, tmp_path, vocab=300, tied=True, tp=2)


def test_tiny_untied_mha_pp2_round_trip_is_bit_exact(tmp_path: Path) -> None:
    src = _tiny_hf_dir(tmp_path / "hf", tied=False, kv_heads=4, vocab=320, seed=1)
    _check_round_trip(src, import_hf(src, tmp_path / "ckpt", pp=2), tmp_path, vocab=320, tied=False, tp=1)


# ---- real weights: SmolLM2-135M-Instruct ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> dict:
    from megatron_reflect.packaged import smollm2_hf_dir

    hf_dir = smollm2_hf_dir()
    tokens = fixed_batch(49152, batch=2, seq=16)
    return {"dir": hf_dir, "tokens": tokens, "logits": hf_logits(hf_dir, tokens)}


# SmolLM2-135M has 9 heads in 3 KV groups: TP must divide 3 (TP=2 is impossible for it; the tiny
# models above cover TP=2).
@pytest.fixture(scope="module", params=[1, 3], ids=["tp1", "tp3"])
def smollm2_converted(request, smollm2: dict, tmp_path_factory) -> Iterator[dict]:
    tp = request.param
    root = tmp_path_factory.mktemp(f"smollm2_tp{tp}")
    ckpt = import_hf(smollm2["dir"], root / "ckpt", tp=tp)
    logits = megatron_logits(ckpt, smollm2["tokens"], tp=tp)
    exported = export_checkpoint(ckpt, root / "hf")
    yield {"tp": tp, "ckpt": ckpt, "megatron_logits": logits, "exported": exported}
    shutil.rmtree(root)  # 1 GB per TP: a CI machine's disk is not ours to fill


def test_smollm2_logits_match_through_megatron_and_back(smollm2: dict, smollm2_converted: dict) -> None:
    on_megatron = compare_logits(smollm2["logits"], smollm2_converted["megatron_logits"])
    assert on_megatron.max_abs_diff <= TOLERANCE, on_megatron
    assert on_megatron.greedy_agreement == 1.0 and on_megatron.positions == 32
    exported = smollm2_converted["exported"]
    back = compare_logits(smollm2["logits"], hf_logits(exported, smollm2["tokens"]))
    assert back.max_abs_diff <= TOLERANCE, back
    _assert_identical(_hf_tensors(Path(smollm2["dir"])), _hf_tensors(exported))
    assert read_reflection_format(exported) == DEFAULT_TEMPLATE
    model_cfg = yaml.safe_load((smollm2_converted["ckpt"] / "model_config.yaml").read_text())
    assert model_cfg["num_query_groups"] == 3 and model_cfg["tie_embeddings"] is True


def test_smollm2_export_loads_with_plain_transformers_and_generates(smollm2: dict, smollm2_converted: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def greedy(model_dir: Path) -> tuple[list[int], str]:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        new = out[0, prompt["input_ids"].shape[1]:].tolist()
        return new, tok.decode(new, skip_special_tokens=True)

    ids, text = greedy(smollm2_converted["exported"])
    want_ids, want_text = greedy(Path(smollm2["dir"]))
    assert ids == want_ids and text == want_text
    assert len(ids) > 0 and text.strip()
    gen = json.loads((smollm2_converted["exported"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


def test_export_records_the_checkpoints_reflection_format(tiny_tied: tuple[Path, Path], tmp_path: Path) -> None:
    import dataclasses

    ckpt = Path(shutil.copytree(tiny_tied[1], tmp_path / "ckpt"))
    custom = dataclasses.replace(DEFAULT_TEMPLATE, open_tag="<reflect>", close_tag="</reflect>",
                                 categories=("Medical harm",))
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["reflection_template"] = dataclasses.asdict(custom)  # as the trainer copies it from the dataset
    (ckpt / "meta.json").write_text(json.dumps(meta))
    out = export_checkpoint(ckpt, tmp_path / "out")
    assert read_reflection_format(out) == custom
    recorded = json.loads((out / "reflection_format.json").read_text())
    assert recorded["source"] == "meta.json" and recorded["verdicts"] == ["Safe", "Unsafe", "Controversial"]
    assert recorded["examples"]["unsafe"] == " <reflect> Unsafe: Medical harm </reflect> "


# ---- bad input -----------------------------------------------------------------------------


def test_export_of_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match=r"junk: not a megatron_reflect checkpoint"):
        export_checkpoint(tmp_path / "junk", tmp_path / "out")
    _no_leftovers(tmp_path, "out")


def test_import_of_an_unsupported_architecture(tmp_path: Path) -> None:
    src = _tiny_hf_dir(tmp_path / "hf", tied=True, kv_heads=2)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"config.json: unsupported architecture \['GPT2LMHeadModel'\]"):
        import_hf(src, tmp_path / "ckpt")
    _no_leftovers(tmp_path, "ckpt")


def test_import_with_a_missing_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = _tiny_hf_dir(tmp_path / "hf", tied=False, kv_heads=2)
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        import_hf(src, tmp_path / "ckpt")
    _no_leftovers(tmp_path, "ckpt")


def test_import_layout_that_does_not_divide_the_model(tmp_path: Path) -> None:
    src = _tiny_hf_dir(tmp_path / "hf", tied=True, kv_heads=2)
    with pytest.raises(ConversionError, match=r"num_hidden_layers=2 is not divisible by PP=3"):
        import_hf(src, tmp_path / "ckpt", pp=3)
    _no_leftovers(tmp_path, "ckpt")


def test_export_with_a_missing_tensor_and_a_bad_tokenizer(tiny_tied: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt = Path(shutil.copytree(tiny_tied[1], tmp_path / "ckpt"))
    bad_tok = tmp_path / "no_tokenizer"
    bad_tok.mkdir()
    # fails after the output directory was started: the partial directory must be removed
    with pytest.raises(ConversionError, match=r"no_tokenizer"):
        export_checkpoint(ckpt, tmp_path / "out", tokenizer_dir=bad_tok)
    _no_leftovers(tmp_path, "out")

    cfg = yaml.safe_load((ckpt / "model_config.yaml").read_text())
    cfg["tie_embeddings"] = False  # claims an output layer that the weights do not have
    (ckpt / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConversionError, match=r"missing tensor 'model.output_layer.weight'"):
        export_checkpoint(ckpt, tmp_path / "out")
    _no_leftovers(tmp_path, "out")


def test_cli_reports_bad_input_and_verifies(tiny_tied: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_checkpoint", Path(__file__).parents[1] / "tools" /
                                                  "convert_checkpoint.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "not a megatron_reflect checkpoint" in capsys.readouterr().err
    assert cli.main(["export", str(tiny_tied[1]), str(tmp_path / "out"), "--verify", "--verify-batch", "2", "8"]) == 0
    printed = capsys.readouterr().out
    assert "greedy-token agreement = 100.00% of 16 positions" in printed
    diff = float(printed.split("max |logit diff| = ")[1].split(",")[0])
    assert diff <= TOLERANCE


def test_export_with_a_tokenizer_that_is_not_a_description(tiny_tied: tuple[Path, Path], tmp_path: Path) -> None:
    """What tools/gpu_check.py once recorded ({"vocab_size": V}) fails as a ConversionError, not a KeyError."""
    ckpt = Path(shutil.copytree(tiny_tied[1], tmp_path / "ckpt"))
    meta = json.loads((ckpt / "meta.json").read_text())
    for bad, match in (({"vocab_size": 300}, r"meta.json: 'tokenizer' has no 'type' \(it has \['vocab_size'\]\)"),
                       ("smollm2", r"'tokenizer' must be a tokenizer description \(a mapping\), not str"),
                       ({"type": "hf", "vocab_size": 300, "model": str(tmp_path / "gone")},
                        r"tokenizer for .*ckpt .*gone")):
        meta["tokenizer"] = bad
        (ckpt / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(ConversionError, match=match):
            export_checkpoint(ckpt, tmp_path / "out")
        _no_leftovers(tmp_path, "out")

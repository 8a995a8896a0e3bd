"""Tokenizers: rendered pieces -> token ids and one uint8 metadata code per token.

``encode_pieces`` tokenizes every piece on its own and concatenates the results, so the
metadata is exact by construction: a token belongs to exactly one piece.  (Tokenizing the
whole rendered text at once and mapping offsets back would merge tokens across a
reflection boundary.)  The cost is a few extra tokens at piece boundaries, measured in the
stats as reflection overhead.  The verdict flag goes on the first token whose characters
overlap the verdict word returned by :meth:`ReflectionTemplate.render`.

Two backends, each batched and picklable (worker processes rebuild them from ``describe()``):

* Hugging Face fast tokenizers (default: the packaged SmolLM2 tokenizer, EOD ``<|endoftext|>`` = 0),
  run through the ``tokenizers`` library directly: a ``tokenizer.json`` whose
  ``tokenizer_config.json`` names a class that uses it as is (``TokenizersBackend``,
  ``PreTrainedTokenizerFast``) loads in ~0.1 s without importing transformers (and torch,
  ~5 s); any other directory goes through ``transformers.AutoTokenizer``.  Either way the
  special tokens are registered as transformers registers them, so ids are identical
  (tested).  ``encode_batch`` runs on the library's Rust threads (``set_threads``);
* SentencePiece ``.model`` files, loaded with the dummy prefix and whitespace collapsing turned
  off (otherwise concatenated pieces would not decode to the original text), and convertible
  into an equivalent Hugging Face fast tokenizer (``save_hf``; ids verified identical).

The batch paths (``encode_flat``, ``encode_documents``) return numpy arrays: no per-token
Python work besides reading the ids out of the tokenizer (~40 ns/token, ~3 % of encoding).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megatron_reflect.data.types import Piece
from megatron_reflect.errors import ConfigError, DataError
from megatron_reflect.files import write_json_atomic, write_text_atomic
from megatron_reflect.reflection import DEFAULT_TEMPLATE, ReflectionTemplate, meta_code

TOKENIZER_TYPES: dict[str, str] = {
    "hf": "hf", "huggingface": "hf", "huggingfacetokenizer": "hf",
    "sentencepiece": "sentencepiece", "sentencepiecetokenizer": "sentencepiece",
    "gptsentencepiecetokenizer": "sentencepiece", "llama2tokenizer": "sentencepiece",
}
# tokenizer_config.json classes that use tokenizer.json unchanged (transformers 5 / 4 names)
_PLAIN_HF_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    """What the writer and the dataset need from a tokenizer (see INTERFACES.md)."""

    vocab_size: int
    eod_id: int
    pad_id: int | None
    template: ReflectionTemplate

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def set_threads(self, n: int) -> None:
        """Encode batches on ``n`` threads (where the backend can)."""

    @property
    def token_dtype(self) -> np.dtype:
        from megatron_reflect.data.indexed import optimal_token_dtype

        return optimal_token_dtype(self.vocab_size)

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of all ``texts`` back to back (in ``token_dtype``) and the number of ids of each."""
        return _flat(self.encode_batch(texts), self.token_dtype)

    def _special_tags(self) -> list[str]:
        """The template tags registered as special tokens (recorded by ``describe``)."""
        return [self.template.open_tag, self.template.close_tag] if self.template.special_tokens else []

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save_hf(self, out_dir: str | Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def token_spans(self, text: str, ids: list[int]) -> list[tuple[int, int]]:
        """Character span of each token of ``ids`` (the encoding of ``text``) within ``text``."""
        raise NotImplementedError

    def encode_pieces(self, pieces: list[Piece]) -> tuple[list[int], list[int]]:
        """Tokens and metadata codes of the concatenated pieces (no EOD appended)."""
        return self.encode_pieces_batch([pieces])[0]

    def encode_pieces_batch(self, documents: list[list[Piece]]) -> list[tuple[list[int], list[int]]]:
        """``encode_pieces`` for many documents, with one batched call for all their text pieces."""
        tokens, meta, lengths = self.encode_documents(documents)
        bounds = np.cumsum(lengths)[:-1]
        return [(t.tolist(), m.tolist()) for t, m in zip(np.split(tokens, bounds), np.split(meta, bounds))]

    def encode_documents(self, documents: list[list[Piece]], eod: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many documents at once: flat tokens (``token_dtype``), flat uint8 codes, and the length
        of each document; ``eod`` appends the EOD token (code 0) to each.  One batched encode
        for all text pieces; reflection pieces come from a small cache."""
        texts = [p.text for pieces in documents for p in pieces if p.reflection is None]
        flat, text_lengths = self.encode_flat(texts)
        ends = np.cumsum(text_lengths).tolist()
        zeros = np.zeros(max(ends[-1] if ends else 0, 1), np.uint8)
        eod_tokens, eod_meta = np.array([self.eod_id], self.token_dtype), zeros[:1]
        tok_parts: list[np.ndarray] = []
        meta_parts: list[np.ndarray] = []
        doc_lengths = np.zeros(len(documents), np.int64)
        k, start = 0, 0
        for d, pieces in enumerate(documents):
            n = 0
            for piece in pieces:
                if piece.reflection is None:
                    end = ends[k]
                    tok_parts.append(flat[start:end])
                    meta_parts.append(zeros[:end - start])
                    n += end - start
                    k, start = k + 1, end
                else:
                    ids, codes = self._reflection(piece)
                    tok_parts.append(ids)
                    meta_parts.append(codes)
                    n += len(ids)
            if eod:
                tok_parts.append(eod_tokens)
                meta_parts.append(eod_meta)
                n += 1
            doc_lengths[d] = n
        if not tok_parts:
            return np.zeros(0, self.token_dtype), np.zeros(0, np.uint8), doc_lengths
        return np.concatenate(tok_parts), np.concatenate(meta_parts), doc_lengths

    def _reflection(self, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and codes of one reflection piece (few distinct ones: cached)."""
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = self.__dict__.setdefault("_reflection_cache", {})
        hit = cache.get(piece.text)
        if hit is not None:
            return hit
        assert piece.reflection is not None
        text, (v0, v1) = self.template.render(piece.reflection)
        if text != piece.text:
            raise DataError(f"reflection piece {piece.text!r} was not rendered by this tokenizer's "
                            f"template (expected {text!r})")
        ids = self.encode_batch([text])[0]
        codes = [meta_code(piece.reflection.verdict)] * len(ids)
        for i, (a, b) in enumerate(self.token_spans(text, ids)):
            if a < v1 and b > v0:
                codes[i] = meta_code(piece.reflection.verdict, verdict_token=True)
                break
        else:
            raise DataError(f"no token of {text!r} covers its verdict word [{v0}, {v1})")
        cache[piece.text] = (np.array(ids, self.token_dtype), np.array(codes, np.uint8))
        return cache[piece.text]


def _flat(ids: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Id lists -> (all ids back to back, length of each): one conversion per list, in C."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    parts = [np.array(seq, dtype=dtype) for seq in ids]
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), lengths


def configure_threads(n: int) -> None:
    """Threads of Hugging Face ``encode_batch``: ``tokenizers`` runs on one process-wide Rust thread
    pool, sized once, at its first parallel use, from ``RAYON_NUM_THREADS``; so call this before the
    first tokenizer of the process encodes anything (later calls only switch parallelism on or off).
    It sets ``TOKENIZERS_PARALLELISM`` and ``RAYON_NUM_THREADS`` in this process's environment."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(max(1, n))


def _token_content(value: object) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer directory (``tokenizer.json``), encoded in batches."""

    def __init__(self, model: str | Path | None = None, template: ReflectionTemplate = DEFAULT_TEMPLATE,
                 eod_token: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if model is None:
            from megatron_reflect.packaged import smollm2_hf_dir

            model = smollm2_hf_dir()
        self.model = str(model)
        self.template = template
        self._hf = None
        self.backend, self.special = self._load_plain() or self._load_transformers()
        self.backend.no_truncation()  # a document is never cut (a tokenizer.json may carry truncation)
        self.backend.no_padding()
        if template.special_tokens:
            from tokenizers import AddedToken

            # as transformers' add_special_tokens({"additional_special_tokens": [...]}) registers them
            self.backend.add_special_tokens([AddedToken(t, rstrip=False, lstrip=False, normalized=False, special=True)
                                             for t in (template.open_tag, template.close_tag)])
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.eod_token = eod_token or ("<|endoftext|>" if "<|endoftext|>" in vocab else self.special.get("eos_token"))
        if self.eod_token is None or self.eod_token not in vocab:
            raise ConfigError(f"{self.model}: no EOD token (no <|endoftext|>, no eos_token); name one")
        self.eod_id = int(vocab[self.eod_token])
        pad = self.special.get("pad_token")
        self.pad_id = int(vocab[pad]) if pad is not None and pad in vocab else None
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self._fast = hasattr(self.backend, "encode_batch_fast")

    def _load_plain(self):
        """``tokenizers.Tokenizer`` straight from tokenizer.json, with the named special tokens of
        tokenizer_config.json added as transformers adds them; None if transformers is needed."""
        root = Path(self.model)
        tj, cfg_path = root / "tokenizer.json", root / "tokenizer_config.json"
        if not (tj.is_file() and cfg_path.is_file()):
            return None
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            extra = json.loads((root / "special_tokens_map.json").read_text(encoding="utf-8")) \
                if (root / "special_tokens_map.json").is_file() else {}
        except (OSError, json.JSONDecodeError):
            return None
        if cfg.get("tokenizer_class") not in _PLAIN_HF_CLASSES:
            return None
        from tokenizers import AddedToken, Tokenizer as FastTokenizer

        try:
            backend = FastTokenizer.from_file(str(tj))
        except Exception as e:  # the Rust side raises a plain Exception for a bad file
            raise ConfigError(f"cannot load a Hugging Face tokenizer from {self.model!r}: {e}") from None
        if backend.get_vocab_size(with_added_tokens=True) > 100_000:
            return None  # transformers may patch the pre-tokenizer of such vocabularies (Mistral's regex)
        special = {k: _token_content(extra.get(k, cfg.get(k))) for k in _NAMED_SPECIAL}
        special = {k: v for k, v in special.items() if v is not None}
        listed = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
        tokens = list(special.values()) + [t for t in map(_token_content, listed) if t is not None]
        if tokens:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        return backend, special

    def _load_transformers(self):
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(self.model)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load a Hugging Face tokenizer from {self.model!r}: {e}") from None
        if not getattr(hf, "is_fast", False):
            raise ConfigError(f"{self.model}: not a fast tokenizer (tokenizer.json is needed)")
        special = {k: str(getattr(hf, k)) for k in _NAMED_SPECIAL if getattr(hf, k, None) is not None}
        return hf.backend_tokenizer, special

    @property
    def hf(self):
        """The equivalent transformers tokenizer (imports transformers; for saving and callers that need it)."""
        if self._hf is None:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(self.model)
            if self.template.special_tokens:
                hf.add_special_tokens({"additional_special_tokens": [self.template.open_tag, self.template.close_tag]})
            self._hf = hf
        return self._hf

    def set_threads(self, n: int) -> None:
        configure_threads(n)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encode = self.backend.encode_batch_fast if self._fast else self.backend.encode_batch
        return _flat([e.ids for e in encode(texts, add_special_tokens=False)], self.token_dtype)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_spans(self, text: str, ids: list[int]) -> list[tuple[int, int]]:
        return list(self.backend.encode(text, add_special_tokens=False).offsets)

    def save_hf(self, out_dir: str | Path) -> None:
        self.hf.save_pretrained(str(out_dir))

    def describe(self) -> dict:
        return {"type": "hf", "model": self.model, "vocab_size": self.vocab_size, "eod_id": self.eod_id,
                "eod_token": self.eod_token, "pad_id": self.pad_id,
                "special_tokens": self._special_tags()}

    def __getstate__(self) -> dict:
        return {"model": self.model, "template": self.template, "eod_token": self.eod_token}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["template"], state["eod_token"])


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model``; EOD is its ``</s>`` (eos) piece."""

    def __init__(self, model: str | Path, template: ReflectionTemplate = DEFAULT_TEMPLATE) -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        self.model = str(model)
        self.template = template
        try:
            proto = pb.ModelProto()
            proto.ParseFromString(Path(self.model).read_bytes())
        except (OSError, Exception) as e:  # protobuf raises its own DecodeError
            raise ConfigError(f"cannot read SentencePiece model {self.model!r}: {e}") from None
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        if template.special_tokens:
            present = {p.piece for p in proto.pieces}
            for tag in (template.open_tag, template.close_tag):
                if tag not in present:
                    proto.pieces.add(piece=tag, score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED)
        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.eod_id = int(self.sp.eos_id())
        if self.eod_id < 0:
            raise ConfigError(f"{self.model}: the SentencePiece model has no eos piece to use as EOD")
        self.pad_id = int(self.sp.pad_id()) if self.sp.pad_id() >= 0 else None
        self.vocab_size = int(self.sp.get_piece_size())
        self.threads = 1

    def set_threads(self, n: int) -> None:
        self.threads = max(1, n)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=self.threads)

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flat(self.sp.encode(texts, num_threads=self.threads), self.token_dtype)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_spans(self, text: str, ids: list[int]) -> list[tuple[int, int]]:
        spans, pos = [], 0
        for piece in self.sp.encode(text, return_type="proto").pieces:  # surfaces tile the text
            spans.append((pos, pos + len(piece.surface)))
            pos += len(piece.surface)
        return spans

    def describe(self) -> dict:
        return {"type": "sentencepiece", "model": self.model, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "pad_id": self.pad_id,
                "special_tokens": self._special_tags()}

    def __getstate__(self) -> dict:
        return {"model": self.model, "template": self.template}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["template"])

    def to_fast(self):
        """An equivalent ``tokenizers.Tokenizer`` (BPE or Unigram, byte fallback kept)."""
        from tokenizers import AddedToken, Tokenizer as FastTokenizer, decoders, models, normalizers

        kind = self.proto.trainer_spec.model_type  # 1 unigram, 2 bpe
        pieces = [(p.piece, p.score, p.type) for p in self.proto.pieces]
        unk = self.sp.unk_id()
        byte_fallback = self.proto.trainer_spec.byte_fallback
        if kind == 2:
            vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
            normal = [i for i, (_, _, t) in enumerate(pieces) if t == 1]  # NORMAL pieces carry the merges
            merges = []
            for i in normal:
                piece = pieces[i][0]
                for k in range(1, len(piece)):
                    left, right = piece[:k], piece[k:]
                    if left in vocab and right in vocab:
                        merges.append((i, vocab[left], vocab[right], left, right))
            merges.sort()
            model = models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges],
                               unk_token=pieces[unk][0] if unk >= 0 else None,
                               byte_fallback=byte_fallback, fuse_unk=True)
        elif kind == 1:
            model = models.Unigram([(piece, score) for piece, score, _ in pieces],
                                   unk_id=unk if unk >= 0 else None, byte_fallback=byte_fallback)
        else:
            raise ConfigError(f"{self.model}: only BPE and Unigram SentencePiece models convert to Hugging Face")
        fast = FastTokenizer(model)
        steps = []
        if self.proto.normalizer_spec.precompiled_charsmap:
            steps.append(normalizers.Precompiled(self.proto.normalizer_spec.precompiled_charsmap))
        steps.append(normalizers.Replace(" ", "\u2581"))
        fast.normalizer = normalizers.Sequence(steps)
        fast.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        control = [AddedToken(p, special=True, normalized=False) for p, _, t in pieces if t in (2, 3)]
        user = [AddedToken(p, special=False, normalized=False) for p, _, t in pieces if t == 4]
        fast.add_special_tokens(control)
        fast.add_tokens(user)
        return fast

    def save_hf(self, out_dir: str | Path) -> None:
        """Write an equivalent HF fast tokenizer; raise if it encodes the probe text differently."""
        from transformers import PreTrainedTokenizerFast

        fast = self.to_fast()
        eos = self.sp.id_to_piece(self.eod_id)
        hf = PreTrainedTokenizerFast(
            tokenizer_object=fast, eos_token=eos,
            unk_token=self.sp.id_to_piece(self.sp.unk_id()) if self.sp.unk_id() >= 0 else None,
            bos_token=self.sp.id_to_piece(self.sp.bos_id()) if self.sp.bos_id() >= 0 else None,
            pad_token=self.sp.id_to_piece(self.pad_id) if self.pad_id is not None else None)
        probe = ("Hello  world.\n\n" + self.template.render(_probe_reflection())[0]
                 + "Über 12345 \u2603 tab\tend ")
        got = fast.encode(probe, add_special_tokens=False).ids
        want = self.sp.encode(probe)
        if got != want:
            raise ConfigError(f"{self.model}: the converted Hugging Face tokenizer differs from SentencePiece "
                              f"on {probe!r}: {got} vs {want}")
        hf.save_pretrained(str(out_dir))


def _probe_reflection():
    from megatron_reflect.reflection import Reflection, Verdict

    return Reflection(Verdict.UNSAFE, "Violent")


def build_tokenizer(tokenizer_type: str = "hf", tokenizer_model: str | None = None,
                    template: ReflectionTemplate = DEFAULT_TEMPLATE) -> Tokenizer:
    """``hf`` (default model: packaged SmolLM2) or ``sentencepiece`` (a ``.model`` file).

    Megatron-LM's names (HuggingFaceTokenizer, SentencePieceTokenizer, GPTSentencePieceTokenizer,
    Llama2Tokenizer) are accepted too.
    """
    kind = TOKENIZER_TYPES.get(tokenizer_type.lower())
    tok: Tokenizer
    if kind == "hf":
        tok = HFTokenizer(tokenizer_model, template)
    elif kind == "sentencepiece":
        if not tokenizer_model:
            raise ConfigError("--tokenizer-model (a SentencePiece .model file) is required for SentencePiece")
        tok = SentencePieceTokenizer(tokenizer_model, template)
    else:
        raise ConfigError(f"unknown tokenizer type {tokenizer_type!r} (expected one of {sorted(TOKENIZER_TYPES)})")
    _check_piecewise(tok)
    return tok


def _check_piecewise(tok: Tokenizer) -> None:
    """Pieces are tokenized one by one: refuse a tokenizer whose encodings do not concatenate
    back to the text (e.g. one that prepends a space to every call, as Llama-2's HF tokenizer)."""
    reflection = _probe_reflection()
    pieces = [Piece("Hello  world. "), Piece(tok.template.render(reflection)[0], reflection), Piece("Next\tline")]
    tokens, _ = tok.encode_pieces(pieces)
    decoded = tok.decode(tokens)
    if decoded != "".join(p.text for p in pieces):
        raise ConfigError(f"tokenizer {tok.describe()['model']!r} does not round-trip text tokenized in pieces "
                          f"(got {decoded!r}); use a byte-level BPE tokenizer or a SentencePiece .model")


def tokenizer_from_description(desc: dict, template: ReflectionTemplate | None = None) -> Tokenizer:
    """Rebuild the tokenizer recorded in a dataset's stats or a checkpoint (``Tokenizer.describe()``).

    Without ``template``, the special tags recorded in ``desc`` are registered again.
    """
    if template is None:
        tags = desc.get("special_tokens") or []
        template = (ReflectionTemplate(open_tag=tags[0], close_tag=tags[1], special_tokens=True) if tags
                    else DEFAULT_TEMPLATE)
    tok = build_tokenizer(desc["type"], desc.get("model"), template)
    if "vocab_size" in desc and tok.vocab_size != desc["vocab_size"]:
        raise ConfigError(f"tokenizer {desc.get('model')!r} now has {tok.vocab_size} tokens, "
                          f"{desc['vocab_size']} were recorded")
    return tok


def train_sentencepiece(texts: Iterable[str], out_prefix: str | Path, vocab_size: int, model_type: str = "bpe",
                        user_symbols: Sequence[str] = ()) -> Path:
    """Train a SentencePiece model on ``texts``; returns ``<out_prefix>.model`` (written atomically).

    Whitespace is kept verbatim (no dummy prefix, no collapsing, identity normalisation) and
    unknown characters fall back to bytes, so every text round-trips exactly.  EOD is ``</s>``.
    """
    import sentencepiece as spm

    out = Path(f"{out_prefix}.model")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
            byte_fallback=True, split_digits=True, user_defined_symbols=list(user_symbols),
            unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise ConfigError(f"SentencePiece training failed: {e}") from None
    write_text_atomic(out, buf.getvalue())
    write_json_atomic(out.with_suffix(".json"), {"vocab_size": vocab_size, "model_type": model_type,
                                                 "user_symbols": list(user_symbols)})
    return out

#!/usr/bin/python3
"""tokenizer_data.py - the tokenizer test data in tests/data/tokenizers/: small
BPE tokenizers trained with Hugging Face's `tokenizers` library on generated
text (words built from syllables of several scripts, numbers, emoji,
punctuation), in the layouts published models use, and the ids the library
gives for a test text, which tests/test_tokenizer.c must reproduce.

  bytelevel.json   GPT-2's layout: ByteLevel pre-tokenizer with its regex,
                   <|endoftext|>; also as vocab.json + merges.txt (gpt2/)
  llama3.json      Llama 3's layout: Split with its regex, ByteLevel without,
                   ignore_merges, special tokens, a BOS template
  sentencepiece.json  Llama 2's layout: Prepend + Replace normalizer, byte
                   fallback (<0xNN>), <s> </s> <unk>, a BOS template
  metaspace.json   newer Mistral's layout: Metaspace pre-tokenizer ("first",
                   no split) and decoder, byte fallback
  digits.json      SmolLM's layout: Digits (each alone) then ByteLevel
  expected.json    per tokenizer: the test text's ids (with and without the
                   template), and the decoded text

usage: PYTHONPATH=DIR /usr/bin/python3 tools/tokenizer_data.py tests/data/tokenizers
Needs `tokenizers` (pip install --target DIR tokenizers==0.19.1).
"""
import json
import os
import random
import sys

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

SCRIPTS = {
    "latin": "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri "
             "ro ru sa se si so su ta te ti to tu th sh ch qu st".split(),
    "accents": "é è ê à ç ñ ü ö ä ß ø å œ".split(),
    "greek": "α β γ δ ε ζ η θ ι κ λ μ ν ξ ο π ρ σ τ υ φ χ ψ ω".split(),
    "cyrillic": "ба во га да же за ка ли мо но пу ра си та ух фе хи це чу ша щи ы ю я".split(),
    "cjk": "的 一 是 不 了 人 我 在 有 他 这 中 大 来 上 国 个 到 说 们 日 本 語 学".split(),
    "arabic": "ب ت ث ج ح خ د ذ ر ز س ش ص ض ط ظ ع غ ف ق ك ل م ن ه و ي".split(),
    "devanagari": "क ख ग घ च छ ज झ ट ठ ड ढ त थ द ध न प फ ब भ म य र ल व श स ह".split(),
}
EMOJI = ["😀", "🎉", "👍🏽", "🇫🇷", "❤️", "🤖", "🌍", "👨‍👩‍👧"]
PUNCT = [",", ".", "!", "?", ";", ":", "-", "(", ")", "\"", "'", "…", "—", "«", "»", "/", "&"]


def word(rng, script):
    syl = SCRIPTS[script]
    return "".join(rng.choice(syl) for _ in range(rng.randint(1, 4)))


def sentence(rng):
    script = rng.choice(list(SCRIPTS))
    parts = []
    for _ in range(rng.randint(3, 12)):
        r = rng.random()
        if r < 0.7:
            w = word(rng, script)
            if script in ("latin", "accents") and rng.random() < 0.2:
                w = w.capitalize()
            if script == "latin" and rng.random() < 0.08:
                w += rng.choice(["'s", "'t", "'re", "'ve", "'ll", "'d", "'m", "'S"])
            parts.append(w)
        elif r < 0.8:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        elif r < 0.87:
            parts.append(rng.choice(EMOJI))
        else:
            parts.append(rng.choice(PUNCT))
    sep = rng.choice([" ", " ", " ", "  ", "\t", " \n"])
    return sep.join(parts) + rng.choice([".", "!", "?", "\n", "\n\n", " "])


def corpus(seed, n):
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def test_text():
    """Every case the issue names, then generated text."""
    fixed = ("Hello world! It's a test: don't, we'll, they've, I'm, she'd, you're. "
             "Numbers 7 42 123 4567 1234567890 3.14159 -12,345 and 2024-11-30.\n"
             "Ünïcödé: café, naïve, Straße; Ελληνικά; русский текст; 中文字符; 日本語; العربية; "
             "हिन्दी.\nEmoji 😀🎉👍🏽🇫🇷❤️ and 👨‍👩‍👧 family.\n"
             "Whitespace:  two,   three,\t\ttabs,\n\n\nnewlines,    \n  trailing   \n"
             "Special <|endoftext|> in text, <s> and </s>, <|begin_of_text|> too.")
    return fixed + "\n" + "".join(corpus(7, 60))


def train_bytelevel(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def train_llama3(texts):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def train_sentencepiece(texts):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1400, special_tokens=specials, show_progress=False,
                                  limit_alphabet=200)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def train_metaspace(texts):
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first",
                                                        split=False),
                                     decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1400, special_tokens=specials, show_progress=False,
                                  limit_alphabet=200)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def train_digits(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                   "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    texts = corpus(1, 4000)
    text = test_text()
    with open(os.path.join(out, "test.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    expected = {}
    for name, make in [("bytelevel", train_bytelevel), ("llama3", train_llama3),
                       ("sentencepiece", train_sentencepiece), ("metaspace", train_metaspace),
                       ("digits", train_digits)]:
        tok = make(texts)
        tok.save(os.path.join(out, name + ".json"))
        plain = tok.encode(text, add_special_tokens=False).ids
        templ = tok.encode(text, add_special_tokens=True).ids
        expected[name] = {"ids": plain, "ids_with_template": templ,
                          "decoded": tok.decode(plain, skip_special_tokens=False)}
        print(f"{name}: vocabulary {tok.get_vocab_size()}, test text {len(plain)} ids")
    gpt2 = os.path.join(out, "gpt2")
    os.makedirs(gpt2, exist_ok=True)
    Tokenizer.from_file(os.path.join(out, "bytelevel.json")).model.save(gpt2)
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)


if __name__ == "__main__":
    main()

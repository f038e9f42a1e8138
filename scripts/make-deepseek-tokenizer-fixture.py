#!/usr/bin/env python3
"""A small tokenizer with DeepSeek-V3's pre-tokenizer, and its reference encodings.

DeepSeek-V3's tokenizer.json (deepseek-ai/DeepSeek-V3) pre-tokenizes with a Sequence of three
Splits (behavior Isolated) and a ByteLevel without regex; its 128k vocabulary is too big to
commit. This script builds a tokenizer with exactly that pre_tokenizer and a byte-level BPE of
~1,000 tokens trained on a short multilingual text, using Hugging Face `tokenizers` (the Rust
library transformers runs), and records for each test string the pre-tokenizer's pieces and
the token ids:

- Tests/Fixtures/deepseek_tokenizer/tokenizer.json
- Tests/Fixtures/deepseek_tokenizer/reference.json

Run: python scripts/make-deepseek-tokenizer-fixture.py   (a venv with `tokenizers`)
"""
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "deepseek_tokenizer")

PATTERNS = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12:30 and 2026 has 365 days.",
    "DeepSeek-V3 is a Mixture-of-Experts model with 671B parameters, 37B active per token.",
    "def forward(self, x):\n    return self.down(silu(self.gate(x)) * self.up(x))\n",
    "日本語のテキストと中文分词测试、カタカナ、ひらがな。",
    "Привет, мир! Γειά σου κόσμε. café naïve résumé Straße São Paulo.",
    "Numbers: 1234567890, 3.14159, 1,000,000; phone 555-0100; e-mail a.b@example.com",
    "Markdown: **bold**, _italic_, `code`, [link](https://example.com/path?q=1&r=2).",
] * 20

STRINGS = [
    "Hello world", "hello", " Hello", "Hello ", "  leading two", "trailing two  ", "a  b   c    d",
    "line one\nline two", "\n\nblank lines\n\n", "tabs\tand\ttabs", "mixed \t\n whitespace", "  \n  \n  x",
    "12345", "3.14159", "1,000,000 dollars", " 42", "phone 555-0100", "2026-11-23T05:00:00Z", "x1y22z333w4444",
    "!!!", "...?!", "well... ok?!", "(parens) [brackets] {braces}", "a+b=c; x*y/z", "#hashtag @user",
    "don't", "I'm here, you're there", "DON'T SHOUT", "it's 'quoted'", ".NET and .com", "'s 't", "-flag --long",
    "café", "naïve résumé", "Ångström", "Straße", "São Paulo", "Zoë Brontë", "e\u0301 combining", "\u0301alone",
    "日本語のテキスト", "中文分词测试", "中文English混合", "カタカナとひらがな", "한국어 문장", "Привет, мир", "Γειά σου κόσμε",
    "مرحبا بالعالم", "emoji 🎉", "🤖🤖🤖", "heart ❤️ ok", "math ∑ ∫ √ ≠", "€100 £50 ¥1000", "E = mc²", "½ ⅓ ②",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {}", "<html><body>hi</body></html>",
    "https://example.com/path?q=1&r=2", "snake_case and camelCase", "a", " ", "  ", "\n", "\r\n", "\t\n",
    "x" * 40, "ab" * 20, "The quick brown fox jumps over the lazy dog.", "temperature: -40°C",
    "\u0001ctrl\u0002", "  !!  ", " ?x", "a\n\n\nb", "end with newline\n",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PATTERNS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    pre = tok.pre_tokenizer
    cases = []
    for s in STRINGS:
        # Pieces before ByteLevel's byte mapping: the three Splits alone.
        pieces = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PATTERNS]).pre_tokenize_str(s)
        cases.append({"text": s, "pieces": [p for p, _ in pieces], "ids": tok.encode(s, add_special_tokens=False).ids})
    import tokenizers
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"tokenizers": tokenizers.__version__, "cases": cases}, f, ensure_ascii=False, indent=0)
    print("wrote", OUT, len(cases), "cases")


if __name__ == "__main__":
    main()

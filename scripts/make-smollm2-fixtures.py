#!/usr/bin/env python3
"""Reference data for the default model, SmolLM2-135M-Instruct Q4_1 (models/, fetched by
scripts/fetch-default-model.sh), recorded with transformers (which dequantizes the GGUF to fp32):

- Tests/Fixtures/smollm2/tokenizer.gguf: the file's tokenizer metadata alone (no tensors), so
  tokenizer tests run from a small committed file;
- Tests/Fixtures/smollm2/tokenizer.json: transformers' token ids for ~70 strings;
- Tests/Fixtures/smollm2/reference.json: for three chat prompts, 32 greedy steps: the token ids and
  at each step the top-10 logits (ids and values) of transformers' forward pass.
Run: python scripts/make-smollm2-fixtures.py   (venv from scripts/requirements-fixtures.txt + accelerate)
"""
import json
import os
import numpy as np
import torch
from gguf import GGUFReader, GGUFWriter, GGUFValueType
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.path.join(ROOT, "models")
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "Tests", "Fixtures", "smollm2")

STRINGS = [
    "Hello world", "hello", " Hello", "Hello ", "  leading two", "trailing two  ", "a  b   c    d",
    "line one\nline two", "\n\nblank lines\n\n", "tabs\tand\ttabs", "mixed \t\n whitespace",
    "12345", "3.14159", "1,000,000 dollars", " 42", "phone 555-0100", "2026-11-23T05:00:00Z",
    "!!!", "...?!", "well... ok?!", "(parens) [brackets] {braces}", "a+b=c; x*y/z", "#hashtag @user",
    "don't", "I'm here, you're there, we'll see, they've gone, she'd say", "DON'T SHOUT", "it's 'quoted'",
    "café", "naïve résumé", "Ångström", "Straße", "São Paulo", "Zoë Brontë",
    "日本語のテキスト", "中文分词测试", "한국어 문장", "Привет, мир", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום",
    "emoji 🎉", "🤖🤖🤖", "family 👨‍👩‍👧‍👦", "flag 🇫🇷", "heart ❤️ ok", "math ∑ ∫ √ ≠", "€100 £50 ¥1000",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {}", "<html><body>hi</body></html>",
    "https://example.com/path?q=1&r=2", "snake_case and camelCase and kebab-case", "ALLCAPS lowercase MiXeD",
    "a", " ", "  ", "\n", "", "x" * 50, "ab" * 30,
    "<|im_start|>user\nHi<|im_end|>", "<|endoftext|>", "text<|im_end|>more", "<|im_start|><|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog.", "E = mc²", "temperature: -40°C", "naïve café 日本 🎉 12 don't",
]

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain why the sky is blue in two sentences.",
]


def write_tokenizer_gguf(reader, path):
    w = GGUFWriter(path, arch="llama")
    for k, f in reader.fields.items():
        if not k.startswith("tokenizer."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            w.add_array(k, f.contents())
        elif t == GGUFValueType.STRING:
            w.add_string(k, f.contents())
        elif t == GGUFValueType.BOOL:
            w.add_bool(k, f.contents())
        else:
            w.add_uint32(k, int(f.contents()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    reader = GGUFReader(os.path.join(MODELS, NAME))
    write_tokenizer_gguf(reader, os.path.join(OUT, "tokenizer.gguf"))
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=NAME)
    cases = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in STRINGS]
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump({"transformers": __import__("transformers").__version__, "cases": cases}, f, ensure_ascii=False, indent=0)

    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=NAME, torch_dtype=torch.float32)
    model.eval()
    runs = []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        seq = list(ids)
        steps = []
        with torch.no_grad():
            for _ in range(32):
                logits = model(torch.tensor([seq])).logits[0, -1].float().numpy()
                top = np.argsort(-logits)[:10]
                steps.append({"top_ids": [int(i) for i in top], "top_logits": [float(logits[i]) for i in top]})
                seq.append(int(top[0]))
        runs.append({"prompt": p, "chat_text": text, "prompt_ids": ids, "greedy": seq[len(ids):], "steps": steps})
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"model": NAME, "runs": runs}, f, ensure_ascii=False, indent=0)
    print("wrote", OUT)


if __name__ == "__main__":
    main()

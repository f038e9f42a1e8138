/// The Tokenizer module owns text ↔ token ids: byte-level BPE built from GGUF metadata or a
/// Hugging Face `tokenizer.json`, the pre-tokenizer of each supported model family, special
/// tokens, and streaming detokenization that never splits a UTF-8 character.
enum TokenizerModule {}

//! Feeds arbitrary bytes to the GGUF parser, and whatever parses to the
//! model configuration and tokenizer builders: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lampo_model::{Config, Gguf, Tokenizer};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::parse(data) {
        for t in &g.tensors {
            assert!(t.offset + t.size <= data.len());
        }
        let _ = Config::from_gguf(&g);
        let _ = Tokenizer::from_gguf(&g);
    }
});

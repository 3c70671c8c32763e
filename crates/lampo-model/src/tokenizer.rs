//! Tokenizers built from GGUF metadata with the Hugging Face `tokenizers`
//! crate: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the
//! pre-tokenizer its `tokenizer.ggml.pre` names, and SentencePiece-style BPE
//! (`llama`) with merges derived from the piece scores and byte fallback.
//!
//! Decoding goes through a per-token byte table so that text can be streamed
//! token by token without ever splitting a UTF-8 character.

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::ModelError;
use crate::gguf::{Gguf, Value};

/// Token kinds, as `tokenizer.ggml.token_type` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(v: i64) -> TokenKind {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

// Pre-tokenizer regexes, as llama.cpp applies them: each splits the pieces of
// the one before, keeping matches and the text between them.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex chain of each supported `tokenizer.ggml.pre`.
fn pre_tokenizer_regexes(pre: &str) -> Option<&'static [&'static str]> {
    Some(match pre {
        "gpt-2" | "default" => &[GPT2_RE],
        "llama-bpe" | "llama3" | "llama-v3" => &[LLAMA3_RE],
        "qwen2" => &[QWEN2_RE],
        "smollm" | "starcoder" | "refact" | "command-r" => &[r"\p{N}", GPT2_RE],
        _ => return None,
    })
}

/// Llama 3 style vocabularies take a pre-token that is itself in the
/// vocabulary whole, without applying merges, and add BOS by default.
fn is_llama3_style(pre: &str) -> bool {
    matches!(pre, "llama-bpe" | "llama3" | "llama-v3")
}

/// The pre-tokenizer names Lampo understands for byte-level BPE vocabularies.
pub const SUPPORTED_PRE: &[&str] = &[
    "gpt-2",
    "default",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "qwen2",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
];

/// What each vocabulary style contributes to a `tokenizers::Tokenizer`,
/// plus the bytes each token decodes to.
struct Parts {
    bpe: BPE,
    bytes: Vec<Vec<u8>>,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
}

pub struct Tokenizer {
    /// Splits control tokens out of the text (`parse_special`).
    with_special: tokenizers::Tokenizer,
    /// Treats control tokens' text as ordinary text.
    plain: tokenizers::Tokenizer,
    /// The bytes each token stands for when decoded.
    bytes: Vec<Vec<u8>>,
    kinds: Vec<TokenKind>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a generation (end of sequence, end of turn).
    eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre`, if any.
    pub pre: Option<String>,
}

fn string_array<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>, ModelError> {
    let v = g
        .get(key)
        .ok_or_else(|| ModelError::MissingKey(key.into()))?;
    let arr = v.as_array().ok_or_else(|| ModelError::WrongType {
        key: key.into(),
        expected: "array of strings".into(),
        found: v.type_name().into(),
    })?;
    arr.iter()
        .map(|s| {
            s.as_str().ok_or_else(|| ModelError::WrongType {
                key: key.into(),
                expected: "array of strings".into(),
                found: format!("array of {}", s.type_name()),
            })
        })
        .collect()
}

fn token_id(g: &Gguf, key: &str, n_vocab: usize) -> Result<Option<u32>, ModelError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
            // Some converters write -1 or out-of-range ids for "none".
            _ if matches!(v, Value::I32(-1) | Value::I64(-1)) => Ok(None),
            _ => Err(ModelError::Tokenizer(format!(
                "{key} = {v} is not a token of the {n_vocab}-token vocabulary"
            ))),
        },
    }
}

fn flag(g: &Gguf, key: &str, default: bool) -> bool {
    g.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// GPT-2's reversible map from bytes to printable characters.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    table
}

fn tk_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, ModelError> {
        let model = crate::config::meta_str(g, "tokenizer.ggml.model")?.to_string();
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .map(str::to_string);
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(ModelError::Tokenizer(format!("vocabulary of {n} tokens")));
        }
        let kinds: Vec<TokenKind> =
            match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
                Some(types) if types.len() == n => types
                    .iter()
                    .map(|t| match t {
                        Value::I32(v) => TokenKind::from_gguf(*v as i64),
                        other => TokenKind::from_gguf(other.as_u64().map_or(1, |v| v as i64)),
                    })
                    .collect(),
                Some(types) => {
                    return Err(ModelError::Tokenizer(format!(
                        "{} token types for {n} tokens",
                        types.len()
                    )));
                }
                None => vec![TokenKind::Normal; n],
            };

        let Parts {
            bpe,
            bytes,
            normalizer,
            pre_tokenizer,
        } = match model.as_str() {
            "gpt2" => Self::byte_level_bpe(g, &tokens, &kinds, pre.as_deref())?,
            "llama" => Self::sentencepiece_bpe(g, &tokens, &kinds)?,
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer model '{other}' is not supported (Lampo reads 'gpt2' and 'llama')"
                )));
            }
        };

        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_normalizer(normalizer);
        tk.with_pre_tokenizer(pre_tokenizer);
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| matches!(k, TokenKind::Control | TokenKind::UserDefined))
            .map(|(t, k)| {
                AddedToken::from(t.to_string(), *k == TokenKind::Control).normalized(false)
            })
            .collect();
        tk.add_tokens(&added);
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);

        let bos = token_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = token_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let mut eog: Vec<u32> = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            eog.extend(token_id(g, key, n)?);
        }
        // Chat models end turns with tokens the file may not flag as eos.
        for name in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<end_of_turn>",
            "<|end|>",
        ] {
            if let Some(i) = tokens.iter().position(|t| *t == name)
                && kinds[i] == TokenKind::Control
            {
                eog.push(i as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();

        Ok(Tokenizer {
            with_special: tk,
            plain,
            bytes,
            kinds,
            bos,
            eos,
            eog,
            add_bos: flag(
                g,
                "tokenizer.ggml.add_bos_token",
                model == "llama" || pre.as_deref().is_some_and(is_llama3_style),
            ),
            add_eos: flag(g, "tokenizer.ggml.add_eos_token", false),
            model,
            pre,
        })
    }

    fn byte_level_bpe(
        g: &Gguf,
        tokens: &[&str],
        kinds: &[TokenKind],
        pre: Option<&str>,
    ) -> Result<Parts, ModelError> {
        let pre_name = pre.unwrap_or("default");
        let regexes = pre_tokenizer_regexes(pre_name).ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "pre-tokenizer '{pre_name}' is not supported (supported: {})",
                SUPPORTED_PRE.join(", ")
            ))
        })?;
        let merges: Vec<(String, String)> = string_array(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::Tokenizer(format!("merge '{m}' is not two tokens")))
            })
            .collect::<Result<_, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(is_llama3_style(pre_name))
            .build()
            .map_err(tk_err)?;

        let mut splits: Vec<PreTokenizerWrapper> = Vec::new();
        for re in regexes {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?;
            splits.push(split.into());
        }
        splits.push(ByteLevel::new(false, false, false).into());
        let pre_tokenizer = PreTokenizerWrapper::Sequence(PreSequence::new(splits));

        let alphabet = byte_level_alphabet();
        let unmap: HashMap<char, u8> = alphabet
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let bytes = tokens
            .iter()
            .zip(kinds)
            .map(|(t, k)| match k {
                // Special tokens are stored as their literal text.
                TokenKind::Control | TokenKind::UserDefined => t.as_bytes().to_vec(),
                _ => t
                    .chars()
                    .map(|c| unmap.get(&c).copied().unwrap_or(b'?'))
                    .collect(),
            })
            .collect();
        Ok(Parts {
            bpe,
            bytes,
            normalizer: None,
            pre_tokenizer: Some(pre_tokenizer),
        })
    }

    fn sentencepiece_bpe(
        g: &Gguf,
        tokens: &[&str],
        kinds: &[TokenKind],
    ) -> Result<Parts, ModelError> {
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(s) if s.len() == tokens.len() => {
                s.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
            }
            _ => {
                return Err(ModelError::Tokenizer(
                    "SentencePiece vocabulary without one score per token".into(),
                ));
            }
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        // SentencePiece merges the adjacent pair whose joined piece scores
        // highest: the same as BPE with merges ranked by that piece's score.
        let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
        for (id, (piece, kind)) in tokens.iter().zip(kinds).enumerate() {
            if *kind != TokenKind::Normal {
                continue;
            }
            for (i, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(i);
                if vocab.contains_key(l) && vocab.contains_key(r) {
                    ranked.push((scores[id], id as u32, l.to_string(), r.to_string()));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let merges = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
        let unk = tokens
            .iter()
            .zip(kinds)
            .find(|(_, k)| **k == TokenKind::Unknown)
            .map(|(t, _)| t.to_string());
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(tk_err)?;

        let mut norms: Vec<NormalizerWrapper> = Vec::new();
        if flag(g, "tokenizer.ggml.add_space_prefix", true) {
            norms.push(Prepend::new("▁".into()).into());
        }
        norms.push(Replace::new(" ", "▁").map_err(tk_err)?.into());
        let normalizer = NormalizerWrapper::Sequence(NormSequence::new(norms));

        let bytes = tokens
            .iter()
            .zip(kinds)
            .map(|(t, k)| match k {
                TokenKind::Byte => {
                    parse_byte_token(t).map_or_else(|| t.as_bytes().to_vec(), |b| vec![b])
                }
                TokenKind::Normal => t.replace('▁', " ").into_bytes(),
                _ => t.as_bytes().to_vec(),
            })
            .collect();
        Ok(Parts {
            bpe,
            bytes,
            normalizer: Some(normalizer),
            pre_tokenizer: None,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the file asks;
    /// `parse_special` turns control-token text such as `<|im_start|>` into
    /// those tokens rather than spelling it out.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let tk = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk.encode_fast(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The bytes a token decodes to (its literal text for special tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Whether `id` ends a generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Decodes tokens to text; control tokens are dropped unless `special`.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut out = Vec::new();
        for &id in ids {
            if special || self.kind(id) != Some(TokenKind::Control) {
                out.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The text of a single token, for display.
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// Turns a stream of token bytes into text without splitting characters:
/// an incomplete UTF-8 sequence at the end is held back until it completes.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("checked prefix"),
                    );
                    match e.error_len() {
                        // A broken sequence will never complete: replace it and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // Possibly the start of a character still to come.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Text for bytes still held back at the end of a stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        let mut d = StreamDecoder::new();
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&[euro[2], b'b']), "€b");
        assert_eq!(
            d.push(&[0xff, b'c']),
            "\u{fffd}c",
            "invalid bytes become U+FFFD, not a stall"
        );
        assert_eq!(d.push(&euro[..2]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn byte_level_alphabet_is_a_bijection() {
        let a = byte_level_alphabet();
        let mut seen: Vec<char> = a.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("a"), None);
    }
}

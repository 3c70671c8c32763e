//! Output constraints: a request's tokens restricted, step by step, to
//! those that keep its output inside a grammar (a JSON schema, or a Lark
//! grammar that may embed schemas). The grammar work is llguidance's: it
//! walks a trie of the vocabulary's bytes against an Earley parser and
//! gives the set of allowed next tokens; Lampo masks the logits with it
//! before sampling and tells it each chosen token (on the request's own
//! thread, see [`crate::masker`], so that a slow grammar slows only its
//! own request).

use std::sync::{Arc, OnceLock};

use lampo_kernels::Backend;
use lampo_model::reasoning::Reasoning;
use lampo_model::tools::json_layout;
use lampo_model::{LoadedModel, TokenKind};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::schema;

/// What a request's output must match.
#[derive(Clone, Debug)]
pub enum Grammar {
    /// A JSON schema; the output is one JSON value valid against it.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (`%json {...}` embeds a schema).
    Lark(String),
    /// `answer`, after a reasoning block the model may write first (must
    /// finish first, when `inside`: the prompt opened it).
    AfterReasoning {
        reasoning: Reasoning,
        inside: bool,
        answer: Box<Grammar>,
    },
}

/// Python's layout, and no free whitespace, which a small model could
/// otherwise fill until its token limit.
fn with_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema
        && !map.contains_key("x-guidance")
    {
        map.insert("x-guidance".into(), json_layout());
    }
    schema
}

impl Grammar {
    /// The JSON schema the output (after any reasoning) must match, if
    /// it is one.
    fn schema(&self) -> Option<&Value> {
        match self {
            Grammar::JsonSchema(s) => Some(s),
            Grammar::Lark(_) => None,
            Grammar::AfterReasoning { answer, .. } => answer.schema(),
        }
    }

    /// The grammar as Lark text.
    fn lark(self) -> String {
        match self {
            Grammar::JsonSchema(schema) => format!("start: %json {}\n", with_layout(schema)),
            Grammar::Lark(text) => text,
            Grammar::AfterReasoning {
                reasoning,
                inside,
                answer,
            } => reasoning.grammar(&answer.lark(), inside),
        }
    }

    fn into_llguidance(self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            other => TopLevelGrammar::from_lark(other.lark()),
        }
    }
}

/// One request's constraint, compiled: the parser at the start of the
/// output and the mask of its first token (computed while compiling, so
/// that a grammar the parser cannot handle is refused before it runs).
#[derive(Clone)]
pub struct Constraint {
    pub(crate) matcher: Matcher,
    pub(crate) first: SimpleVob,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

/// Sets the logits of tokens `allowed` does not hold to -inf.
pub(crate) fn apply_mask(allowed: &SimpleVob, logits: &mut [f32]) {
    // A word of the mask per 32 tokens: most words are all-allowed or
    // (under a grammar, far more often) all-banned.
    for (word, chunk) in allowed.as_slice().iter().zip(logits.chunks_mut(32)) {
        match *word {
            u32::MAX => {}
            0 => chunk.fill(f32::NEG_INFINITY),
            w => {
                for (bit, l) in chunk.iter_mut().enumerate() {
                    if w & (1 << bit) == 0 {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}

/// The next mask of `matcher`, or why there is none (one line).
pub(crate) fn next_mask(matcher: &mut Matcher) -> Result<SimpleVob, String> {
    let allowed = matcher.compute_mask().map_err(|e| one_line(&e))?;
    if allowed.num_set() == 0 {
        return Err("the grammar allows no next token".into());
    }
    Ok(allowed)
}

/// A grammar failure as one sentence: llguidance's first line, without
/// the parser state it appends (token lists, statistics), which is no
/// business of the client's.
pub(crate) fn one_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text
        .split("<state>")
        .next()
        .unwrap_or_default()
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("the grammar failed")
        .trim();
    let mut why: String = first.chars().take(300).collect();
    if why.len() < first.len() {
        why.push('…');
    }
    why
}

/// Compiles grammars for one model. The vocabulary trie is built on the
/// first constrained request, so that serving without constraints costs
/// nothing.
pub(crate) struct Compiler<B: Backend> {
    model: Arc<LoadedModel<B>>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl<B: Backend> Compiler<B> {
    pub(crate) fn new(model: Arc<LoadedModel<B>>) -> Compiler<B> {
        Compiler {
            model,
            factory: OnceLock::new(),
        }
    }

    /// A constraint at the start of the output, or why the grammar cannot
    /// be used (an invalid or unsupported schema, a grammar error).
    pub(crate) fn compile(&self, grammar: Grammar) -> Result<Constraint, String> {
        let factory = self
            .factory
            .get_or_init(|| factory(&self.model))
            .as_ref()
            .map_err(Clone::clone)?;
        if let Some(s) = grammar.schema() {
            schema::check(s)?;
        }
        let parser = factory
            .create_parser(grammar.into_llguidance())
            .map_err(|e| one_line(&e))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(one_line(&e));
        }
        let first = next_mask(&mut matcher)?;
        Ok(Constraint { matcher, first })
    }
}

fn factory<B: Backend>(lm: &Arc<LoadedModel<B>>) -> Result<ParserFactory, String> {
    let env: TokEnv = Arc::new(Vocabulary::new(lm.clone()));
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    // Grammar errors go back to the caller, not to the server's stderr.
    factory.quiet();
    Ok(factory)
}

/// The model's vocabulary as llguidance sees it: each token's bytes, with
/// control tokens marked special (a grammar can name them, text cannot
/// produce them).
struct Vocabulary<B: Backend> {
    model: Arc<LoadedModel<B>>,
    trie: TokTrie,
}

impl<B: Backend> Vocabulary<B> {
    fn new(model: Arc<LoadedModel<B>>) -> Vocabulary<B> {
        let tok = &model.tokenizer;
        let n_vocab = model.model.config.n_vocab;
        let words: Vec<Vec<u8>> = (0..n_vocab as u32)
            .map(|t| match tok.kind(t) {
                Some(TokenKind::Control | TokenKind::Unused) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tok.token_bytes(t));
                    w
                }
                // Tokens past the tokenizer's table never appear in text.
                None => Vec::new(),
                _ => tok.token_bytes(t).to_vec(),
            })
            .collect();
        let eos = tok
            .eos
            .or_else(|| (0..n_vocab as u32).find(|&t| tok.is_eog(t)))
            .unwrap_or(0);
        let info = TokRxInfo {
            vocab_size: n_vocab as u32,
            tok_eos: eos,
            tok_bos: tok.bos,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let trie = TokTrie::from(&info, &words);
        Vocabulary { model, trie }
    }
}

impl<B: Backend> TokenizerEnv for Vocabulary<B> {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The model's own tokenization of `s` where it spells exactly `s`;
    /// otherwise (a sentencepiece tokenizer adds its leading "▁" to text
    /// that begins a prompt, not to forced bytes mid-answer) the trie's
    /// greedy one.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        let tok = &self.model.tokenizer;
        if let Ok(text) = std::str::from_utf8(s)
            && let Ok(ids) = tok.encode(text, false, false)
            && ids.iter().flat_map(|&t| tok.token_bytes(t)).eq(s.iter())
        {
            return ids;
        }
        self.trie.greedy_tokenize(s)
    }
}

//! `lampo info` (a model file's metadata and tensors) and `lampo
//! tokenize` (a text's token ids): reading a model without running it.

use anyhow::{Context, Result, bail};
use clap::Args;
use lampo_model::Gguf;

use crate::models;

#[derive(Args)]
pub struct InfoArgs {
    /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m)
    #[arg(value_name = "MODEL")]
    positional: Option<String>,
    /// Model file or name, as the other commands take it
    #[arg(short, long, conflicts_with = "positional")]
    model: Option<String>,
    /// Also list every tensor
    #[arg(long)]
    tensors: bool,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m); default smollm2
    #[arg(short, long)]
    model: Option<String>,
    /// The text (`-` reads it from standard input)
    #[arg(short, long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Read the text from FILE
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    file: Option<std::path::PathBuf>,
    /// Add BOS/EOS as the model's vocabulary asks
    #[arg(long)]
    add_special: bool,
    /// Turn control-token text such as <|im_start|> into those tokens
    #[arg(long)]
    parse_special: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let arg = a.positional.or(a.model);
    let path = models::resolve(arg.as_deref())?;
    let list_tensors = a.tensors;
    let file = lampo_model::GgufFile::open(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let g: &Gguf = &file.gguf;
    println!(
        "file: {} ({:.1} MB, GGUF v{})",
        path.display(),
        file.file_size() as f64 / 1e6,
        g.version
    );
    println!("metadata ({} keys):", g.metadata.len());
    for (k, v) in &g.metadata {
        let shown = v.to_string();
        let shown = if shown.chars().count() > 100 {
            format!(
                "{}… ({} chars)",
                shown.chars().take(100).collect::<String>(),
                shown.len()
            )
        } else {
            shown
        };
        println!("  {k} = {}", shown.replace('\n', "\\n"));
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64, usize)> = Default::default();
    for t in &g.tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.elements();
        e.2 += t.size;
    }
    let total: u64 = g.tensors.iter().map(|t| t.elements()).sum();
    println!(
        "tensors: {} holding {:.1} M parameters",
        g.tensors.len(),
        total as f64 / 1e6
    );
    for (ty, (n, el, bytes)) in by_type {
        println!(
            "  {ty:5} {n:4} tensors {:8.1} M params {:8.1} MB",
            el as f64 / 1e6,
            bytes as f64 / 1e6
        );
    }
    if list_tensors {
        for t in &g.tensors {
            println!("  {:32} {:5} {:?}", t.name, t.dtype.name(), t.shape);
        }
    }
    match lampo_model::Config::from_gguf(g) {
        Ok(c) => println!(
            "model: {} layers, width {}, ffn {}, {} heads ({} kv) of {}, vocab {}, context {}, rope base {}, rms eps {}",
            c.n_layer,
            c.n_embd,
            c.n_ff,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_vocab,
            c.n_ctx_train,
            c.rope_base,
            c.rms_eps
        ),
        Err(e) => println!("model: cannot run: {e}"),
    }
    Ok(())
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = crate::args::read_prompt(a.prompt.as_deref(), a.file.as_ref())?;
    let path = models::resolve(a.model.as_deref())?;
    let file = lampo_model::GgufFile::open(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let tok = lampo_model::Tokenizer::from_gguf(&file.gguf)?;
    let ids = tok.encode(&text, a.add_special, a.parse_special)?;
    if ids.is_empty() && !text.is_empty() {
        bail!("the text gave no tokens");
    }
    for id in ids {
        println!("{id:6} -> {:?}", tok.token_text(id));
    }
    Ok(())
}

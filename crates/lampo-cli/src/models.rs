//! Finding model files: a path, or the name of a model fetched by
//! `scripts/fetch-models` into the models folder.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Known model names and their file names (kept in step with scripts/fetch-models).
pub const KNOWN: &[(&str, &str)] = &[
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("qwen05b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ("qwen15b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ("gemma270m", "gemma-3-270m-q4_k_m.gguf"),
];

pub const DEFAULT: &str = "smollm2";

/// Folders searched for models: `$LAMPO_MODELS`, `./models`, and `models/`
/// beside any ancestor of the executable (so `target/release/lampo` finds the
/// repository's folder).
fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("LAMPO_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("models"));
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|a| a.join("models")));
    }
    dirs
}

/// The short name of the model `arg` named (the default when none), if
/// it is a known one: by name, or by a path to a known file.
pub fn short_name(arg: Option<&str>, path: &Path) -> Option<String> {
    let arg = arg.unwrap_or(DEFAULT);
    if KNOWN.iter().any(|(n, _)| *n == arg) {
        return Some(arg.to_string());
    }
    let file = path.file_name()?.to_str()?;
    KNOWN
        .iter()
        .find(|(_, f)| *f == file)
        .map(|(n, _)| n.to_string())
}

/// Resolves `-m`: an existing path, or a known name (default smollm2).
pub fn resolve(arg: Option<&str>) -> Result<PathBuf> {
    let name = arg.unwrap_or(DEFAULT);
    let path = Path::new(name);
    if path.is_file() {
        return Ok(PathBuf::from(name));
    }
    if path.is_dir() {
        let mut found: Vec<String> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.ends_with(".gguf"))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        if found.is_empty() {
            bail!("'{name}' is a directory, not a model file, and holds no .gguf files");
        }
        bail!(
            "'{name}' is a directory, not a model file; the .gguf files in it: {}",
            found.join(", ")
        );
    }
    let Some(&(_, file)) = KNOWN.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
        bail!(
            "no model file '{name}' (give a path to a .gguf file or one of: {})",
            names.join(", ")
        );
    };
    for dir in model_dirs() {
        let p = dir.join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("model '{name}' ({file}) is not downloaded; run: scripts/fetch-models {name}")
}

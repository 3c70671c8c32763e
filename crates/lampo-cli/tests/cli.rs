//! The `lampo` binary end to end: answers, one-line errors, no panics.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn lampo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lampo"));
    c.env(
        "LAMPO_MODELS",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    );
    c
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = lampo().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_chat_answers_paris() {
    let (ok, stdout, stderr) = run(&[
        "run",
        "--chat",
        "-p",
        "What is the capital of France? Answer in one sentence.",
        "--temp",
        "0",
        "-n",
        "32",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
}

#[test]
fn chat_reads_turns_from_a_pipe() {
    let mut child = lampo()
        .args(["chat", "--temp", "0", "-n", "32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France? Answer in one sentence.\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));
}

#[test]
fn errors_are_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("lampo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.gguf");
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&real).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let not_gguf = dir.join("notes.gguf");
    std::fs::write(&not_gguf, b"just some text, not a model").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "-m", truncated.to_str().unwrap(), "-p", "hi"],
            "spans bytes",
        ),
        (
            &["run", "-m", not_gguf.to_str().unwrap(), "-p", "hi"],
            "not a GGUF file",
        ),
        (
            &["run", "-m", "no-such-model", "-p", "hi"],
            "no model file 'no-such-model'",
        ),
        (&["run", "-p", "hi", "--top-p", "2"], "--top-p"),
        (
            &["perplexity", "-f", "/nonexistent/text.txt"],
            "cannot read /nonexistent/text.txt",
        ),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line:\n{stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn info_summarises_the_model() {
    let (ok, stdout, stderr) = run(&["info"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("general.architecture = \"llama\""),
        "{stdout}"
    );
    assert!(stdout.contains("model: 30 layers, width 576"), "{stdout}");
    assert!(stdout.contains("Q4_1"), "{stdout}");
}

#[test]
fn perplexity_needs_two_chunks_of_text() {
    let file = std::env::temp_dir().join(format!("lampo-short-{}.txt", std::process::id()));
    std::fs::write(&file, "A short text.").unwrap();
    let (ok, _, stderr) = run(&["perplexity", "-f", file.to_str().unwrap(), "-c", "512"]);
    std::fs::remove_file(&file).ok();
    assert!(!ok);
    assert!(stderr.contains("needs at least 1024 tokens"), "{stderr}");
}

#[test]
fn run_follows_a_json_schema_or_a_grammar_and_refuses_bad_ones() {
    let dir = std::env::temp_dir().join(format!("lampo-constrain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"capital": {"enum": ["Paris", "Lyon"]}}, "required": ["capital"]}"#,
    )
    .unwrap();
    let grammar = dir.join("answer.lark");
    std::fs::write(&grammar, "start: \"The answer is \" /[0-9]{1,3}/ \".\"").unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"type": "strnig"}"#).unwrap();
    let (ok, stdout, stderr) = run(&[
        "run",
        "--chat",
        "-p",
        "What is the capital of France?",
        "--temp",
        "0",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"capital": "Paris"}"#);
    let (ok, stdout, stderr) = run(&[
        "run",
        "--chat",
        "-p",
        "What is 6 times 7?",
        "--temp",
        "0",
        "--grammar",
        grammar.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let number = stdout.trim().strip_prefix("The answer is ").unwrap();
    assert!(
        number.strip_suffix('.').unwrap().parse::<u32>().is_ok(),
        "{stdout}"
    );
    let (ok, _, stderr) = run(&["run", "-p", "x", "--json-schema", bad.to_str().unwrap()]);
    assert!(
        !ok && stderr.starts_with("error: cannot constrain the output")
            && stderr.contains("strnig"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

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

/// Runs `args` and expects a refusal whose one line contains `needle`.
fn refused(args: &[&str], needle: &str) {
    let (ok, stdout, stderr) = run(args);
    assert!(!ok, "{args:?} should fail: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn settings_that_cannot_work_are_refused_before_anything_runs() {
    refused(&["run", "-p", "hi", "-n", "0"], "at least 1");
    refused(&["run", "-p", "hi", "--temp", "-1"], "between 0 and 2");
    refused(&["run", "-p", "hi", "--ctx", "0"], "no room for a prompt");
    refused(
        &["run", "-p", "hi", "-t", "64"],
        "more threads than this machine",
    );
    refused(&["serve", "--max-batch", "0"], "at least 1");
    refused(&["serve", "--ctx", "0"], "no room for a prompt");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    refused(
        &["run", "-m", dir.to_str().unwrap(), "-p", "hi"],
        "is a directory",
    );
    let (_, _, stderr) = run(&["info", dir.to_str().unwrap()]);
    assert!(
        stderr.contains("is a directory") && stderr.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "the .gguf files in it are listed: {stderr}"
    );
    // serve checks everything before it announces anything.
    let (ok, stdout, stderr) = run(&["serve", "--kv-memory", "1MiB", "--port", "0"]);
    assert!(!ok);
    assert!(stderr.contains("KV memory"), "{stderr}");
    assert!(
        !stdout.contains("serving"),
        "announced before refusing: {stdout}"
    );
}

#[test]
fn a_huge_context_is_clamped_and_kv_memory_is_sized_by_need() {
    let (ok, _, stderr) = run(&[
        "run", "-p", "hi", "-n", "4", "--ctx", "10000000", "--temp", "0", "--stats",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("trained context; using 8192"), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("KV cache:")).unwrap();
    let mib: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(mib < 1.0, "a 5-token answer took {line}");
    // A two-token answer is too short to time: no absurd rates.
    let (ok, _, stderr) = run(&["run", "-p", "hi", "-n", "2", "--temp", "0", "--stats"]);
    assert!(ok, "{stderr}");
    let rates: Vec<f64> = stderr
        .split(" t/s")
        .filter_map(|s| s.rsplit(['(', ' ']).next()?.parse().ok())
        .collect();
    assert!(rates.iter().all(|&r| r < 1e6), "{stderr}");
    assert!(
        stderr.contains("too short to time") || !rates.is_empty(),
        "{stderr}"
    );
}

#[test]
fn prompts_come_from_files_and_stdin_and_info_takes_m() {
    let file = std::env::temp_dir().join(format!("lampo-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, "The capital of France is").unwrap();
    let (ok, from_file, stderr) = run(&[
        "run",
        "-f",
        file.to_str().unwrap(),
        "-n",
        "6",
        "--temp",
        "0",
    ]);
    assert!(ok, "{stderr}");
    let (ok, from_arg, _) = run(&[
        "run",
        "-p",
        "The capital of France is",
        "-n",
        "6",
        "--temp",
        "0",
    ]);
    assert!(ok);
    assert_eq!(from_file, from_arg);
    let mut child = lampo()
        .args(["run", "-p", "-", "-n", "6", "--temp", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"The capital of France is")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), from_arg);
    std::fs::remove_file(&file).ok();
    let (ok, by_m, _) = run(&["info", "-m", "smollm2"]);
    let (ok2, by_position, _) = run(&["info", "smollm2"]);
    assert!(ok && ok2);
    assert_eq!(by_m, by_position);
    let (ok, version, _) = run(&["--version"]);
    assert!(ok);
    assert!(
        version.contains("git ") && version.contains("kernels: "),
        "{version}"
    );
}

/// A `lampo serve` process on a free port, its output collected.
struct Server {
    child: std::process::Child,
    addr: String,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = lampo();
        cmd.args(["serve", "--port", "0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let (out, tx) = (output.clone(), tx.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    out.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        // The address it announces, then readiness.
        let addr = rx
            .iter()
            .find_map(|l| {
                let at = l.find("http://")?;
                let rest = &l[at + 7..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                Some(rest[..end].to_string())
            })
            .expect("lampo serve announced no address");
        let server = Server {
            child,
            addr,
            output,
        };
        while server.get("/ready").0 != 200 {
            assert!(server.output.lock().unwrap().len() < 1 << 20, "never ready");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }

    /// One request; the status and the body.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, raw)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, "")
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The output once it holds `needle` (a log line is written after
    /// its response is sent: wait for it, do not expect it already).
    fn output_with(&self, needle: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed().as_secs() < 60,
                "{needle:?} never logged:\n{out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_signal_ends_the_streams_and_exits_at_once() {
    let mut server = Server::start(&["--grace-period", "600"], &[]);
    // A stream that would run for minutes.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    let body = r#"{"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true}"#;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    }
    server.signal("TERM");
    // The first signal stops new connections but lets the stream run.
    server.output_with("shutting down");
    server.signal("INT");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(
        rest.contains("\"code\":\"server_shutdown\"") && rest.contains("data: [DONE]"),
        "the stream ends with an error event and [DONE]: {}",
        &rest[rest.len().saturating_sub(400)..]
    );
    // It exits long before its 600-second grace period.
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", server.output());
}

#[test]
fn serve_answers_to_its_short_name_and_file_stem_and_prints_a_quick_example() {
    let server = Server::start(&["-m", "smollm2"], &[]);
    for name in ["smollm2", "SmolLM2-135M-Instruct.Q4_1"] {
        let body = format!(r#"{{"model": "{name}", "prompt": "Hi", "max_tokens": 2}}"#);
        let (status, raw) = server.request("POST", "/v1/completions", &body);
        assert_eq!(status, 200, "{name}: {raw}");
    }
    let (status, _) = server.request(
        "POST",
        "/v1/completions",
        r#"{"model": "gpt-4", "prompt": "Hi", "max_tokens": 2}"#,
    );
    assert_eq!(status, 404);
    let out = server.output();
    let example = out.lines().find(|l| l.contains("try: curl")).unwrap();
    assert!(example.contains("\"max_tokens\": 64"), "{example}");
    assert!(example.contains("\"model\": \"smollm2\""), "{example}");
}

#[test]
fn logs_have_no_colour_when_redirected_and_follow_filters_and_formats() {
    // Redirected: no colour codes; probes are not logged at info.
    let server = Server::start(&[], &[]);
    for _ in 0..3 {
        server.get("/ready");
    }
    server.request("POST", "/tokenize", r#"{"prompt": "hi"}"#);
    let body = r#"{"model": "smollm2", "prompt": "Hi", "max_tokens": 2}"#;
    server.request("POST", "/v1/completions", body);
    drop(server.get("/health"));
    // The completion is logged after the probes before it.
    let out = server.output_with("route=/v1/completions");
    assert!(
        !out.contains('\u{1b}'),
        "colour codes in redirected logs:\n{out}"
    );
    assert!(!out.contains("route=/ready"), "probes at info:\n{out}");
    drop(server);
    // RUST_LOG=debug shows them; JSON is one object per line with the id.
    let server = Server::start(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    server.get("/ready");
    server.request("POST", "/v1/completions", body);
    let out = server.output_with("\"route\":\"/v1/completions\"");
    let requests: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["message"] == "request")
        .collect();
    assert!(
        requests
            .iter()
            .any(|r| r["route"] == "/ready" && r["level"] == "DEBUG"),
        "{out}"
    );
    let completion = requests
        .iter()
        .find(|r| r["route"] == "/v1/completions")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        completion["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req-")),
        "{completion}"
    );
    assert!(
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.starts_with('{')),
        "not all JSON:\n{out}"
    );
}

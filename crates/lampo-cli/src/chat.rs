//! `lampo chat`: a conversation in the terminal, as an engine client
//! (earlier turns come from the prefix cache; speculation works as in
//! `run`). On a terminal it has line editing and history; Ctrl-C during a
//! reply stops the reply and returns to the prompt, Ctrl-C at an empty
//! prompt or Ctrl-D leaves. Lines starting with `/` are commands, never
//! sent to the model. From a pipe it reads one turn per line.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use anyhow::{Context, Result, bail};
use clap::Args;
use lampo_engine::{Engine, EngineConfig, Event, Finish, GenerateParams, Rejected, Request, Sink};
use lampo_model::Message;
use rustyline::error::ReadlineError;

use crate::args::{ModelArgs, SamplingArgs, SpecArgs, check_memory, fit_context};
use crate::run::chat_prompt;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
}

const HELP: &str = "commands:
  /help            this list
  /reset           forget the conversation (the system message stays)
  /system TEXT     set the system message and start over
  /exit, /quit     leave (so do Ctrl-D, and Ctrl-C at an empty prompt)
Ctrl-C during a reply stops it.";

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Empty,
    Say(&'a str),
    Help,
    Reset,
    System(&'a str),
    Exit,
    Unknown(&'a str),
}

fn parse(line: &str) -> Line<'_> {
    let line = line.trim();
    if line.is_empty() {
        return Line::Empty;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Line::Say(line);
    };
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    match name {
        "help" | "?" => Line::Help,
        "reset" | "clear" => Line::Reset,
        "system" => Line::System(rest.trim()),
        "exit" | "quit" | "bye" => Line::Exit,
        _ => Line::Unknown(name),
    }
}

/// Where lines come from: an editor on a terminal, else plain lines.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Pipe(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    /// The next line; `None` to leave (Ctrl-D, Ctrl-C at the prompt, the
    /// end of the input).
    fn next(&mut self) -> Result<Option<String>> {
        match self {
            Input::Editor(ed) => match ed.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = ed.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => Ok(None),
                Err(e) => Err(e).context("reading the terminal"),
            },
            Input::Pipe(lines) => lines.next().transpose().context("reading stdin"),
        }
    }
}

/// The reply in progress, which Ctrl-C stops (and which leaves the
/// program when there is none).
static REPLYING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// A reply's events; the engine stops the request once Ctrl-C is pressed.
struct Reply(mpsc::Sender<Event>);

impl Sink for Reply {
    fn send(&mut self, event: Event) -> bool {
        !STOP.load(Ordering::SeqCst) && self.0.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

/// How a reply ended, for the conversation.
enum Ended {
    /// The whole reply, or as far as the token limit let it go.
    Complete { cut: bool },
    /// Ctrl-C.
    Stopped,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params();
    let backend = a.model.backend()?;
    let mut lm = a.model.load_on(backend.clone())?;
    if lm.chat_template.is_none() {
        let name = a.model.model.as_deref().unwrap_or(crate::models::DEFAULT);
        bail!(
            "{name} is a base model without a chat template, so it cannot chat; \
             it continues text instead: lampo run -m {name} -p \"Once upon a time\""
        );
    }
    let ctx = fit_context(a.sampling.ctx, &mut lm);
    let draft = a.spec.load_draft(&backend)?;
    let mut config = EngineConfig {
        max_batch: 1,
        speculation: a.spec.spec,
        max_proposal: a.spec.max_proposal,
        ..EngineConfig::new(ctx)
    };
    // The conversation so far stays in the prefix cache: room for two contexts.
    let draft_config = draft.as_ref().map(|d| &d.model.config);
    config.kv_memory = 2 * config.kv_bytes_for(&lm.model.config, draft_config, ctx);
    check_memory(config.kv_memory, &format!("a {ctx}-token conversation"))?;
    let name = lm
        .model
        .config
        .name
        .clone()
        .unwrap_or_else(|| "the model".into());
    let engine =
        Engine::start_with_draft(Arc::new(lm), draft, config).map_err(|e| anyhow::anyhow!(e))?;
    let interactive = std::io::stdin().is_terminal();
    let mut input = if interactive {
        let ed = rustyline::DefaultEditor::new().context("setting up the terminal")?;
        eprintln!("Chatting with {name}. /help lists the commands; Ctrl-D leaves.");
        Input::Editor(Box::new(ed))
    } else {
        Input::Pipe(std::io::stdin().lock().lines())
    };
    // Ctrl-C while a reply streams stops it; anywhere else it leaves.
    let _ = ctrlc::set_handler(|| {
        if REPLYING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    });
    let mut system = a.system.clone();
    let mut messages = fresh(&system);
    while let Some(line) = input.next()? {
        let text = match parse(&line) {
            Line::Empty => continue,
            Line::Exit => break,
            Line::Help => {
                eprintln!("{HELP}");
                continue;
            }
            Line::Reset => {
                messages = fresh(&system);
                eprintln!("(conversation cleared)");
                continue;
            }
            Line::System(s) => {
                system = (!s.is_empty()).then(|| s.to_string());
                messages = fresh(&system);
                eprintln!(
                    "(system message {}; conversation cleared)",
                    if system.is_some() { "set" } else { "removed" }
                );
                continue;
            }
            Line::Unknown(c) => {
                eprintln!("unknown command /{c}; /help lists the commands");
                continue;
            }
            Line::Say(t) => t.to_string(),
        };
        messages.push(Message::new("user", &text));
        let mut reply = String::new();
        match answer(&engine, &messages, &params, &mut reply)? {
            Ended::Complete { cut } => {
                if cut {
                    eprintln!(
                        "[reply cut at the {}-token limit; -n raises it]",
                        params.max_tokens
                    );
                }
                messages.push(Message::new("assistant", &reply));
            }
            Ended::Stopped => {
                eprintln!("[stopped]");
                // The turn stays, with the part of the reply given.
                messages.push(Message::new("assistant", &reply));
            }
        }
    }
    Ok(())
}

/// A conversation holding only the system message.
fn fresh(system: &Option<String>) -> Vec<Message> {
    system.iter().map(|s| Message::new("system", s)).collect()
}

/// Streams the model's reply to the conversation in `messages` into
/// stdout and `reply`. A conversation grown past the context starts over
/// (the user is told).
fn answer(
    engine: &Engine,
    messages: &[Message],
    params: &GenerateParams,
    reply: &mut String,
) -> Result<Ended> {
    STOP.store(false, Ordering::SeqCst);
    REPLYING.store(true, Ordering::SeqCst);
    let result = stream_reply(engine, messages, params, reply);
    REPLYING.store(false, Ordering::SeqCst);
    result
}

fn stream_reply(
    engine: &Engine,
    messages: &[Message],
    params: &GenerateParams,
    reply: &mut String,
) -> Result<Ended> {
    let prompt = chat_prompt(engine.model(), messages)?;
    let (tx, rx) = mpsc::channel();
    let request = Request {
        prompt,
        params: params.clone(),
        stop: Vec::new(),
        timeout: None,
        constraint: None,
        tier: lampo_engine::Tier::Default,
        first_token_within: None,
    };
    match engine.submit(request, Reply(tx)) {
        Ok(()) => {}
        Err(Rejected::Invalid(why)) => {
            eprintln!("({why}: the conversation no longer fits; /reset to start over)");
            return Ok(Ended::Complete { cut: false });
        }
        Err(e) => bail!("{e}"),
    }
    let mut stdout = std::io::stdout().lock();
    let mut finish = None;
    for event in rx {
        match event {
            Event::Text { text, .. } => {
                reply.push_str(&text);
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            Event::Done(d) => finish = Some(d.finish),
            Event::Started => {}
        }
    }
    let _ = writeln!(stdout);
    Ok(match finish {
        None => Ended::Stopped,
        Some(Finish::Length) => Ended::Complete { cut: true },
        Some(Finish::Error(e) | Finish::Invalid(e)) => bail!("generation failed: {e}"),
        Some(_) => Ended::Complete { cut: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_commands_or_turns() {
        assert_eq!(parse("  "), Line::Empty);
        assert_eq!(parse("hello there"), Line::Say("hello there"));
        assert_eq!(parse("/help"), Line::Help);
        assert_eq!(parse("/reset"), Line::Reset);
        assert_eq!(parse("/system Be brief."), Line::System("Be brief."));
        assert_eq!(parse("/quit"), Line::Exit);
        assert_eq!(parse("/wat now"), Line::Unknown("wat"));
    }
}

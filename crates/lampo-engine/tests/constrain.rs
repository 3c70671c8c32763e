//! Constrained decoding on SmolLM2: JSON-schema and tool-call grammars
//! hold under greedy and sampled decoding, the constraint really steers
//! (values the model would never write), and bad grammars are refused.

mod common;

use std::sync::{Arc, mpsc};

use lampo_engine::{
    Engine, EngineConfig, Event, Finish, GenerateParams, Grammar, Request, SamplingParams,
};
use lampo_model::tools::{Piece, ToolChoice, ToolFormat, ToolSpec};
use lampo_model::{LoadedModel, Message};
use serde_json::{Value, json};

fn engine() -> Engine {
    let lm = Arc::new(common::load("smollm2"));
    Engine::start(lm, EngineConfig::new(1024)).expect("engine starts")
}

fn prompt(lm: &LoadedModel, question: &str) -> Vec<u32> {
    let text = lm
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template")
        .render(&[Message::new("user", question)], true, None)
        .unwrap();
    lm.tokenizer.encode(&text, false, true).unwrap()
}

/// Runs `question` under `grammar`; the output and how it ended.
fn run(
    engine: &Engine,
    question: &str,
    grammar: Grammar,
    sampling: SamplingParams,
) -> (String, Finish) {
    let request = Request {
        prompt: prompt(engine.model(), question),
        params: GenerateParams {
            max_tokens: 200,
            sampling,
            logprobs: None,
        },
        stop: Vec::new(),
        timeout: None,
        constraint: Some(engine.constrain(grammar).expect("grammar compiles")),
        tier: lampo_engine::Tier::Default,
        first_token_within: None,
    };
    let (tx, rx) = mpsc::channel();
    engine
        .submit(request, move |e: Event| tx.send(e).is_ok())
        .unwrap();
    let mut text = String::new();
    for e in rx.iter() {
        match e {
            Event::Text { text: t, .. } => text.push_str(&t),
            Event::Done(d) => return (text, d.finish),
            Event::Started => {}
        }
    }
    panic!("no Done event");
}

fn samplings() -> Vec<SamplingParams> {
    let mut all = vec![SamplingParams::greedy()];
    for seed in [1, 2, 3] {
        all.push(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        });
    }
    all
}

#[test]
fn json_schemas_hold_under_greedy_and_sampled_decoding() {
    let engine = engine();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "color": {"enum": ["chartreuse", "vermilion"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
            "pet": {"type": ["string", "null"], "maxLength": 20}
        },
        "required": ["name", "age", "color", "tags"],
        "additionalProperties": false
    });
    for sampling in samplings() {
        let (text, finish) = run(
            &engine,
            "Describe a person as JSON.",
            Grammar::JsonSchema(schema.clone()),
            sampling.clone(),
        );
        assert_eq!(finish, Finish::Stop, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let o = v.as_object().unwrap();
        assert!(
            o.keys().all(|k| schema["properties"].get(k).is_some()),
            "{text}"
        );
        assert!(
            o["name"].as_str().is_some_and(|s| s.chars().count() <= 40),
            "{text}"
        );
        assert!(
            o["age"].as_i64().is_some_and(|a| (0..=150).contains(&a)),
            "{text}"
        );
        // Words SmolLM2 never picks for a person's color on its own.
        assert!(
            ["chartreuse", "vermilion"].contains(&o["color"].as_str().unwrap()),
            "{text}"
        );
        let tags = o["tags"].as_array().unwrap();
        assert!(
            tags.len() <= 3 && tags.iter().all(Value::is_string),
            "{text}"
        );
        if let Some(pet) = o.get("pet") {
            assert!(pet.is_null() || pet.is_string(), "{text}");
        }
        // Python's json.dumps layout.
        assert!(text.starts_with("{\"name\": \""), "{text}");
    }
}

#[test]
fn any_json_object_and_nested_arrays() {
    let engine = engine();
    let (text, finish) = run(
        &engine,
        "Reply with a JSON object whose key \"capital\" holds the capital of France.",
        Grammar::JsonSchema(json!({"type": "object"})),
        SamplingParams::greedy(),
    );
    assert_eq!(finish, Finish::Stop, "{text}");
    assert!(
        serde_json::from_str::<Value>(&text).unwrap().is_object(),
        "{text}"
    );
    let schema = json!({
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "minItems": 2, "maxItems": 4
    });
    let (text, _) = run(
        &engine,
        "List some pairs of numbers.",
        Grammar::JsonSchema(schema),
        SamplingParams::greedy(),
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let outer = v.as_array().unwrap();
    assert!((2..=4).contains(&outer.len()), "{text}");
    for pair in outer {
        let pair = pair.as_array().unwrap();
        assert!(pair.len() == 2 && pair.iter().all(Value::is_i64), "{text}");
    }
}

#[test]
fn tool_call_grammars_give_valid_calls() {
    let engine = engine();
    let tools = vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"]
            }),
        },
        ToolSpec {
            name: "get_time".into(),
            parameters: json!({"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}}, "required": ["zone"]}),
        },
    ];
    let format = ToolFormat::Hermes;
    for (choice, parallel) in [
        (ToolChoice::Required, false),
        (ToolChoice::Named("get_time".into()), true),
    ] {
        for sampling in samplings() {
            let grammar = format.grammar(&tools, &choice, parallel, None, &|_| None);
            let (text, finish) = run(
                &engine,
                "What is the weather in Paris?",
                Grammar::Lark(grammar),
                sampling,
            );
            assert_eq!(finish, Finish::Stop, "{text}");
            let mut parser = format.parser();
            let mut pieces = parser.push(&text);
            pieces.extend(parser.finish());
            let (mut names, mut args) = (Vec::new(), String::new());
            for p in pieces {
                match p {
                    Piece::CallStart { name, .. } => names.push(name),
                    Piece::Arguments { text, .. } => args.push_str(&text),
                    Piece::Content(c) => panic!("content {c:?} in {text}"),
                }
            }
            assert_eq!(names.len(), 1, "{text}");
            let args: Value = serde_json::from_str(&args).unwrap_or_else(|e| panic!("{e}: {text}"));
            match (&choice, names[0].as_str()) {
                (ToolChoice::Named(n), name) => assert_eq!(n, name),
                (_, "get_weather") => {
                    assert!(args["city"].is_string(), "{text}");
                    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
                }
                (_, "get_time") => assert!(args["zone"].is_string(), "{text}"),
                (_, other) => panic!("unknown tool {other}"),
            }
        }
    }
}

#[test]
fn bad_grammars_are_refused_with_the_reason() {
    let engine = engine();
    for (grammar, needle) in [
        (Grammar::JsonSchema(json!({"type": "strnig"})), "strnig"),
        (
            Grammar::JsonSchema(
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
            ),
            "missing",
        ),
        (
            Grammar::Lark("start: undefined_rule".into()),
            "undefined_rule",
        ),
    ] {
        let err = engine.constrain(grammar).unwrap_err();
        assert!(err.contains(needle), "{err}");
    }
}

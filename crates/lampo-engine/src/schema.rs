//! Checks on a JSON schema before it is compiled, for what the grammar
//! engine would only find out once decoding has begun (after its limits
//! are exhausted): a schema that requires itself (a required property, a
//! mandatory array item or a `$ref` that leads back to where it started,
//! with no way out) has no finite instance, and a `pattern` whose counted
//! repetitions multiply past [`MAX_REPEATS`] (`(a{1000}){1000}`) is more
//! than the lexer can build. Finding them up front turns them into clear
//! refusals.

use std::collections::HashSet;

use serde_json::Value;

/// Most characters a `pattern`'s nested counted repetitions may expand to.
pub const MAX_REPEATS: u64 = 10_000;

/// Why `schema` cannot be used, if a check finds out.
pub fn check(schema: &Value) -> Result<(), String> {
    if let Some(why) = endless_requirement(schema) {
        return Err(why);
    }
    let mut patterns = Vec::new();
    collect_patterns(schema, &mut patterns);
    for p in patterns {
        let n = repeats(p);
        if n > MAX_REPEATS {
            return Err(format!(
                "the pattern '{}' repeats too much: its counted repetitions multiply to {n} (at most {MAX_REPEATS})",
                p.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Every `pattern` string in `schema`.
fn collect_patterns<'a>(schema: &'a Value, out: &mut Vec<&'a str>) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(p) if k == "pattern" => out.push(p),
                    _ => collect_patterns(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
        _ => {}
    }
}

/// The largest product of nested counted repetitions (`{n}`, `{n,m}`) in
/// a regular expression: how many times its innermost atom may have to
/// be spelled out.
fn repeats(pattern: &str) -> u64 {
    // Per open group, the largest product seen inside it so far; `last`
    // is that of the atom or group just read, which a quantifier repeats.
    let mut stack: Vec<u64> = vec![1];
    let mut last = 1u64;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                i += 1;
                last = 1;
            }
            '[' => {
                // A class is one atom; skip to its closing bracket.
                i += 1;
                if chars.get(i) == Some(&']') {
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last = 1;
            }
            '(' => stack.push(1),
            ')' if stack.len() > 1 => {
                last = stack.pop().expect("a group is open");
            }
            '{' => {
                let close = chars[i..].iter().position(|&c| c == '}').map(|p| i + p);
                let bound = close.and_then(|end| {
                    let body: String = chars[i + 1..end].iter().collect();
                    let mut parts = body.split(',');
                    let lo: u64 = parts.next()?.trim().parse().ok()?;
                    let hi = match parts.next() {
                        None => lo,
                        Some(h) if h.trim().is_empty() => lo,
                        Some(h) => h.trim().parse().ok()?,
                    };
                    Some(lo.max(hi))
                });
                if let (Some(end), Some(n)) = (close, bound) {
                    let top = stack.last_mut().expect("the outermost group");
                    *top = (*top).max(last.saturating_mul(n.max(1)));
                    i = end;
                    last = 1;
                }
            }
            _ => last = 1,
        }
        let top = stack.last_mut().expect("the outermost group");
        *top = (*top).max(last);
        i += 1;
    }
    stack.into_iter().max().unwrap_or(1)
}

/// Why no finite JSON value can satisfy `schema`, if that is so.
fn endless_requirement(schema: &Value) -> Option<String> {
    let mut on_path = Vec::new();
    let mut finite = HashSet::new();
    visit(schema, "#".to_string(), schema, &mut on_path, &mut finite)
}

/// Depth-first over the edges "an instance of this schema must contain
/// an instance of that one"; a back edge is a requirement without end.
/// `finite` holds the pointers already shown to have no cycle below them.
fn visit(
    root: &Value,
    pointer: String,
    schema: &Value,
    on_path: &mut Vec<String>,
    finite: &mut HashSet<String>,
) -> Option<String> {
    if let Some(at) = on_path.iter().position(|p| *p == pointer) {
        let cycle = on_path[at..].join(" -> ");
        return Some(if on_path.len() - at == 1 {
            format!("'{pointer}' requires itself, so no finite JSON value can satisfy the schema")
        } else {
            format!(
                "the schema requires itself without end ({cycle} -> {pointer}), so no finite JSON value can satisfy it"
            )
        });
    }
    if finite.contains(&pointer) || on_path.len() > 256 {
        return None;
    }
    on_path.push(pointer.clone());
    for (next, sub) in mandatory(root, &pointer, schema) {
        if let Some(why) = visit(root, next, sub, on_path, finite) {
            return Some(why);
        }
    }
    on_path.pop();
    finite.insert(pointer);
    None
}

/// The sub-schemas every instance of `schema` must also satisfy
/// somewhere inside it (or, for `$ref` and `allOf`, itself), with their
/// pointers. Alternatives (`anyOf`, `oneOf`, nullable types) are never
/// mandatory, so this errs towards finding no cycle.
fn mandatory<'a>(root: &'a Value, pointer: &str, schema: &'a Value) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    let Value::Object(s) = schema else {
        return out;
    };
    if let Some(Value::String(r)) = s.get("$ref")
        && let Some(target) = resolve(root, r)
    {
        out.push((r.clone(), target));
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for (i, sub) in all.iter().enumerate() {
            out.push((format!("{pointer}/allOf/{i}"), sub));
        }
    }
    if s.contains_key("anyOf") || s.contains_key("oneOf") {
        return out;
    }
    // Only a schema that admits objects alone (or arrays alone) forces
    // what is inside them; `["object", "null"]` can always be null.
    let only = |kind: &str| match s.get("type") {
        Some(Value::String(t)) => t == kind,
        None => kind == "object" && (s.contains_key("properties") || s.contains_key("required")),
        _ => false,
    };
    if only("object")
        && let (Some(Value::Array(required)), Some(Value::Object(props))) =
            (s.get("required"), s.get("properties"))
    {
        for name in required.iter().filter_map(Value::as_str) {
            if let Some(sub) = props.get(name) {
                out.push((format!("{pointer}/properties/{}", escape(name)), sub));
            }
        }
    }
    if only("array")
        && s.get("minItems").and_then(Value::as_u64).unwrap_or(0) > 0
        && let Some(items) = s.get("items").filter(|i| i.is_object())
    {
        out.push((format!("{pointer}/items"), items));
    }
    out
}

/// A local reference (`#` or `#/a/b`) resolved in `root`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix('#')?;
    if path.is_empty() {
        return Some(root);
    }
    root.pointer(path)
}

/// A property name as a JSON pointer segment.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_counted_repetitions_multiply() {
        assert_eq!(repeats("^(a{1000}){1000}$"), 1_000_000);
        assert_eq!(repeats("^\\d{4}-\\d{2}-\\d{2}$"), 4);
        assert_eq!(repeats("^(.*a){20}$"), 20);
        assert_eq!(repeats("^((ab){3,5}c){2}$"), 10);
        assert_eq!(repeats("[{]{2}x{3,}"), 3);
        assert_eq!(repeats("(a(b){7})"), 7);
        assert_eq!(repeats("plain"), 1);
        let bad = serde_json::json!({"properties": {"s": {"type": "string", "pattern": "^(a{1000}){1000}$"}}});
        let why = check(&bad).unwrap_err();
        assert!(why.contains("1000000"), "{why}");
        // A property called "pattern" is not a pattern.
        let ok =
            serde_json::json!({"properties": {"pattern": {"type": "string", "pattern": "^x{3}$"}}});
        assert_eq!(check(&ok), Ok(()));
    }

    #[test]
    fn schemas_that_require_themselves_are_found() {
        let selfref = json!({"$ref": "#"});
        assert!(
            endless_requirement(&selfref)
                .unwrap()
                .contains("'#' requires itself")
        );
        let chain = json!({
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}, "required": ["next"]}},
            "$ref": "#/$defs/node"
        });
        let why = endless_requirement(&chain).unwrap();
        assert!(why.contains("#/$defs/node"), "{why}");
        let via_array = json!({
            "type": "object",
            "properties": {"kids": {"type": "array", "minItems": 1, "items": {"$ref": "#"}}},
            "required": ["kids"]
        });
        assert!(endless_requirement(&via_array).is_some());
        let via_all_of =
            json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"});
        assert!(endless_requirement(&via_all_of).is_some());
    }

    #[test]
    fn recursion_with_a_way_out_is_allowed() {
        for ok in [
            // Optional recursion: a linked list that may end.
            json!({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}),
            // Nullable.
            json!({"$defs": {"n": {"type": ["object", "null"], "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}}, "$ref": "#/$defs/n"}),
            // An alternative that ends it.
            json!({"$defs": {"t": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"l": {"$ref": "#/$defs/t"}}, "required": ["l"]}]}}, "$ref": "#/$defs/t"}),
            // Arrays that may be empty.
            json!({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["kids"]}),
            // The same definition used twice, no cycle.
            json!({"$defs": {"p": {"type": "string"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}}, "required": ["a", "b"]}),
            json!({"type": "object"}),
            json!(true),
        ] {
            assert_eq!(endless_requirement(&ok), None, "{ok}");
        }
    }
}

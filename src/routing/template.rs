//! Templates for routing keys, topics and record keys: literal text with `{type}`,
//! `{source}` and `{/json/pointer}` (a value from the body).

use super::Body;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
    Source,
    Pointer(String),
}

/// Longest text one `{/pointer}` renders to in a routing key or topic.
const MAX_VALUE_LEN: usize = 128;

/// What a rendered body value may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Values {
    /// A routing key or topic: values chosen by senders are reduced to `[A-Za-z0-9._-]`
    /// (anything else becomes `_`) and 128 characters, so a body cannot name arbitrary
    /// exchanges' keys or invalid topics.
    Names,
    /// A record key: the value as it is.
    Raw,
}

#[derive(Debug, Clone)]
pub(super) struct Template(Vec<Part>, String);

impl Template {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close =
                rest[open..].find('}').ok_or_else(|| format!("unclosed '{{' in {text:?}"))? + open;
            parts.push(match &rest[open + 1..close] {
                "type" => Part::Type,
                "source" => Part::Source,
                pointer if pointer.starts_with('/') => Part::Pointer(pointer.to_owned()),
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; use {{type}}, {{source}} or {{/json/pointer}}"
                    ));
                }
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self(parts, text.to_owned()))
    }

    /// The template as written in the config.
    pub(super) fn source(&self) -> &str {
        &self.1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn render(
        &self,
        event_type: &str,
        source: &str,
        body: &mut Body<'_>,
        values: Values,
    ) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Type => out.push_str(event_type),
                Part::Source => out.push_str(source),
                Part::Pointer(p) => {
                    let text = body.get().pointer(p).map(value_text).unwrap_or_default();
                    match values {
                        Values::Raw => out.push_str(&text),
                        Values::Names => out.extend(text.chars().take(MAX_VALUE_LEN).map(|c| {
                            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                                c
                            } else {
                                '_'
                            }
                        })),
                    }
                }
            }
        }
        out
    }
}

/// A body value as text: strings without quotes, null as nothing, the rest as JSON.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Body, Template, Values};

    fn render(t: &str, body: &str, values: Values) -> String {
        let mut body = Body::raw(body.as_bytes());
        Template::parse(t).unwrap().render("order.created", "default", &mut body, values)
    }

    #[test]
    fn renders_placeholders_and_rejects_unknown_ones() {
        assert_eq!(render("in.{source}.{type}!", "{}", Values::Names), "in.default.order.created!");
        assert_eq!(render("plain", "{}", Values::Names), "plain");
        assert!(Template::parse("{customer}").is_err());
        assert!(Template::parse("{type").is_err());
        assert!(Template::parse("type}").is_err());
    }

    #[test]
    fn pointer_values_render_and_sender_text_cannot_escape_a_name() {
        let body = r#"{"region":"eu-west","n":7,"evil":"a/b c#*.x","deep":{"k":true}}"#;
        assert_eq!(render("orders.{/region}", body, Values::Names), "orders.eu-west");
        assert_eq!(render("{/n}-{/deep/k}", body, Values::Names), "7-true");
        assert_eq!(render("t.{/evil}", body, Values::Names), "t.a_b_c__.x");
        assert_eq!(render("{/missing}x", body, Values::Names), "x");
        assert_eq!(render("{source}:{/evil}", body, Values::Raw), "default:a/b c#*.x");
        let long = format!(r#"{{"v":"{}"}}"#, "y".repeat(500));
        assert_eq!(render("{/v}", &long, Values::Names).len(), 128);
    }
}

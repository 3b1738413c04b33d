//! Templates for routing keys and topics: literal text with `{type}` and `{source}`.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
    Source,
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
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; use {{type}} or {{source}}"
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

    pub(super) fn render(&self, event_type: &str, source: &str) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Type => event_type,
                Part::Source => source,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Template;

    #[test]
    fn renders_placeholders_and_rejects_unknown_ones() {
        let t = Template::parse("in.{source}.{type}!").unwrap();
        assert_eq!(t.render("order.created", "default"), "in.default.order.created!");
        assert_eq!(Template::parse("plain").unwrap().render("a", "b"), "plain");
        assert!(Template::parse("{/customer}").is_err());
        assert!(Template::parse("{type").is_err());
        assert!(Template::parse("type}").is_err());
    }
}

//! What is wrong with a configuration, and where in the file.
//!
//! A [`Problem`] names the key path it is about (`routes[0].to[1]`, `sources.github.verify`)
//! in the notation the messages use: keys joined by `.`, sequence items as `[i]`. The
//! [`SourceMap`] of the file turns that path into a line, so every problem reported by
//! `check-config` or a reload points at the line to fix.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde_saphyr::granit_parser::{Event, Parser};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path the problem is about.
    pub at: String,
    pub message: String,
    /// The line of `at` (or of its nearest enclosing key) in the file, once located.
    pub line: Option<usize>,
}

impl Problem {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self { at: at.into(), message: message.into(), line: None }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Where each key of a configuration file is: key path → line (1-based).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// The file the configuration came from, as messages name it.
    pub file: PathBuf,
    lines: HashMap<String, usize>,
}

impl SourceMap {
    /// Records the line of every mapping key and sequence item of `text`. A file that does
    /// not parse maps nothing (its parse error already carries the position).
    pub fn of(file: PathBuf, text: &str) -> Self {
        let mut map = Self { file, lines: HashMap::new() };
        map.record(text);
        map
    }

    /// The line of `at`, or of the nearest enclosing key the file has (a default or an
    /// environment override has no line of its own).
    pub fn line_of(&self, at: &str) -> Option<usize> {
        let mut path = at;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// Fills in the line of every problem.
    pub fn locate(&self, problems: &mut [Problem]) {
        for problem in problems {
            problem.line = self.line_of(&problem.at);
        }
    }

    fn record(&mut self, text: &str) {
        // What the walk is inside of: a mapping (waiting for a key or for that key's value)
        // or a sequence (with the index of its next item). Each carries its own path.
        enum Frame {
            Mapping { path: String, key: Option<String> },
            Sequence { path: String, next: usize },
        }
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { return };
            let line = span.start.line();
            // The path of the node this event starts (a value), and note it; or, for a
            // mapping waiting for a key, take the scalar as that key.
            let node_path = match stack.last_mut() {
                Some(Frame::Mapping { path, key }) => match key.take() {
                    Some(k) => Some(join(path, &k)),
                    None => {
                        if let Event::Scalar(name, ..) = &event {
                            let k = name.to_string();
                            self.lines.entry(join(path, &k)).or_insert(line);
                            *key = Some(k);
                        }
                        None
                    }
                },
                Some(Frame::Sequence { path, next }) => {
                    let p = format!("{path}[{next}]");
                    *next += 1;
                    self.lines.entry(p.clone()).or_insert(line);
                    Some(p)
                }
                None => Some(String::new()),
            };
            match event {
                Event::MappingStart(..) => {
                    stack.push(Frame::Mapping { path: node_path.unwrap_or_default(), key: None })
                }
                Event::SequenceStart(..) => {
                    stack.push(Frame::Sequence { path: node_path.unwrap_or_default(), next: 0 })
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_map_to_their_lines() {
        let text = "server:\n  listen: x\nroutes:\n  - match: { type: a }\n    to:\n      - kafka: { topic: t }\n      - rabbitmq: { exchange: e }\n";
        let map = SourceMap::of("c.yaml".into(), text);
        assert_eq!(map.line_of("server.listen"), Some(2));
        assert_eq!(map.line_of("routes[0]"), Some(4));
        assert_eq!(map.line_of("routes[0].match.type"), Some(4));
        assert_eq!(map.line_of("routes[0].to[1]"), Some(7));
        assert_eq!(map.line_of("routes[0].to[1].rabbitmq.exchange"), Some(7));
        // Not in the file: the nearest enclosing key.
        assert_eq!(map.line_of("server.timeouts.idle"), Some(1));
        assert_eq!(map.line_of("store.path"), None);
    }
}

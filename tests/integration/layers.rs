//! The top-level modules of `src/` form layers, and every `crate::…` path points down them.
//!
//! The rules, each checked here with its own failure message:
//!
//! - nothing imports `app` (only `main.rs` does, through `orchestron::`, and it is not
//!   checked); no module imports `cli`;
//! - `config` imports only `event`, `delivery` and `telemetry`;
//! - `store` imports nothing from `routing`, `publish`, `relay`, `ingest`, `live` or `admin`;
//! - `telemetry`, `watch`, `event`, `delivery`, `systemd` and `tasks` are the foundation: they
//!   import nothing from the crate except what the map below lists for them;
//! - there is no loop between top-level modules (checked on the imports the code actually
//!   makes, reported as `a -> b -> a`).
//!
//! The rules are encoded as a map, [`allowed_imports`], of the modules each top-level module
//! may import; docs/architecture.md draws the same picture. A new top-level module fails this
//! test until it is added to both. Importing one's own top-level module is always allowed, and
//! so is importing `testing` (the `#[cfg(test)]` builders shared by unit tests), which itself
//! may import anything but `app` and `cli`.
//!
//! `self::` and `super::` paths are not checked: they are meant to stay inside a module.
//! `src/lib.rs` (the crate root, which declares every module) and the binaries (`src/main.rs`,
//! `src/bin/`) are skipped.
//!
//! The check reads the source text; it needs no compiler support, only a small lexer that
//! blanks out comments and literals so that `crate::` in a doc comment or a string does not
//! count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module of shared test builders: anyone may import it, it may import nearly anything.
const TESTING: &str = "testing";

/// Every top-level module the map knows, from the bottom layer up.
const MODULES: &[&str] = &[
    "event",
    "telemetry",
    "watch",
    "systemd",
    "tasks",
    "delivery",
    "config",
    "validate",
    "routing",
    "store",
    "publish",
    "server",
    "sources",
    "live",
    "sync",
    "ingest",
    "relay",
    "admin",
    "cli",
    "app",
];

/// The top-level modules `module` may import, or `None` for a module the map does not know.
fn allowed_imports(module: &str) -> Option<Vec<&'static str>> {
    // `live` holds the running configuration every request handler and worker reads, so it
    // sits on everything below the three front ends.
    const LIVE: &[&str] = &[
        "event",
        "delivery",
        "config",
        "telemetry",
        "watch",
        "tasks",
        "systemd",
        "validate",
        "routing",
        "sources",
        "publish",
        "store",
        "server",
    ];
    let allowed = match module {
        "event" | "telemetry" | "watch" | "systemd" | "tasks" => vec![],
        "delivery" => vec!["event"],
        "config" => vec!["event", "delivery", "telemetry"],
        "validate" => vec!["event", "config"],
        "routing" => vec!["event", "delivery", "config"],
        "store" => vec!["event", "delivery", "config", "telemetry", "tasks"],
        "publish" => vec!["event", "delivery", "config", "telemetry", "tasks"],
        "server" => vec!["config", "telemetry", "watch", "tasks"],
        "sources" => vec!["event", "delivery", "config", "telemetry", "server"],
        "live" => LIVE.to_vec(),
        // Fleet sync: the fleet's state, below the front ends that consult it.
        "sync" => [LIVE, &["live"]].concat(),
        // The three front ends stand side by side: none of them imports another.
        "ingest" | "relay" | "admin" => [LIVE, &["live", "sync"]].concat(),
        "cli" => [LIVE, &["live", "sync", "admin", "ingest", "relay"]].concat(),
        // `app` wires everything together; only `cli` (which starts it) is above it.
        "app" => MODULES.iter().copied().filter(|m| !["app", "cli"].contains(m)).collect(),
        _ => return None,
    };
    Some(allowed)
}

/// The named rules an import from `module` to `target` breaks, for the failure message (the
/// map is what decides; these say which design decision the import goes against).
fn broken_rules(module: &str, target: &str) -> Vec<String> {
    const STORE_NEVER: &[&str] = &["routing", "publish", "relay", "ingest", "live", "admin"];
    const FOUNDATION: &[&str] = &["telemetry", "watch", "event", "delivery", "systemd", "tasks"];
    let mut rules = Vec::new();
    if target == "app" {
        rules.push("nothing imports app (only main.rs starts it)".to_owned());
    }
    if target == "cli" {
        rules.push("no module imports cli".to_owned());
    }
    if module == "config" {
        rules.push("config imports only event, delivery, telemetry".to_owned());
    }
    if module == "store" && STORE_NEVER.contains(&target) {
        rules.push(format!("store imports nothing from {}", STORE_NEVER.join(", ")));
    }
    if FOUNDATION.contains(&module) {
        rules.push(format!(
            "{module} is a foundation module and imports nothing from the crate but {}",
            list_or_nothing(&allowed_imports(module).unwrap_or_default())
        ));
    }
    rules
}

fn list_or_nothing(modules: &[&str]) -> String {
    if modules.is_empty() { "(nothing)".to_owned() } else { modules.join(", ") }
}

/// The top-level module a file (path relative to `src/`, `/`-separated) belongs to, or `None`
/// for the files this test skips: the crate root and the binaries.
fn top_level_module(path: &str) -> Option<&str> {
    if path == "lib.rs" || path == "main.rs" || path.starts_with("bin/") {
        return None;
    }
    match path.split_once('/') {
        Some((directory, _)) => Some(directory),
        None => Some(path.strip_suffix(".rs").unwrap_or(path)),
    }
}

/// Every broken layer rule in `files` (paths relative to `src/`, with their text), one line per
/// violation, in a stable order: imports by file and line, then unknown modules, then loops.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    // Module -> the first file that showed it, so each unknown module is reported once.
    let mut unknown = BTreeMap::new();
    // Every import between two different modules, with the first place it is made, so a loop
    // can be reported with where to start cutting it.
    let mut edges: BTreeMap<(&str, String), String> = BTreeMap::new();

    let mut files: Vec<_> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, text) in files {
        let Some(module) = top_level_module(path) else { continue };
        let allowed = allowed_imports(module);
        if allowed.is_none() && module != TESTING {
            unknown.entry(module).or_insert(path);
        }
        for import in crate_imports(&strip_comments_and_literals(text)) {
            let target = import.module.as_str();
            if target == module || target == TESTING {
                continue;
            }
            let place = format!("src/{path}:{}", import.line);
            if target == "*" {
                found.push(format!(
                    "{place}: {module} imports the whole crate root ({}); name the modules so \
                     this test can check them",
                    import.path
                ));
                continue;
            }
            // `testing` is imported from everywhere by design; leaving it out of the graph
            // keeps the loop check about the production layers.
            if module != TESTING {
                edges
                    .entry((module, target.to_owned()))
                    .or_insert_with(|| format!("{place} {}", import.path));
            }
            let refused = if module == TESTING {
                ["app", "cli"].contains(&target).then(|| "anything but app, cli".to_owned())
            } else {
                // An unknown module has no rules yet; it is reported once, below.
                allowed.as_ref().filter(|list| !list.contains(&target)).map(|l| list_or_nothing(l))
            };
            let Some(allowed_text) = refused else { continue };
            let mut message = vec![format!(
                "{place}: {module} imports {target} ({}); allowed: {allowed_text}",
                import.path
            )];
            message.extend(broken_rules(module, target).iter().map(|rule| format!("rule: {rule}")));
            if allowed_imports(target).is_none() {
                message.push(format!("{target} is not a top-level module in the layer map"));
            }
            found.push(message.join("; "));
        }
    }

    for (module, path) in unknown {
        found.push(format!(
            "src/{path}: top-level module {module} is not in the layer map; add it to \
             allowed_imports in tests/integration/layers.rs and to docs/architecture.md"
        ));
    }

    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(*from).or_default().insert(to.as_str());
    }
    for cycle in cycles(&graph) {
        let hops: Vec<String> = cycle
            .iter()
            .zip(cycle.iter().skip(1))
            .map(|(from, to)| format!("{from} -> {to} at {}", edges[&(*from, to.to_string())]))
            .collect();
        found.push(format!(
            "import loop between top-level modules: {} ({})",
            cycle.join(" -> "),
            hops.join("; ")
        ));
    }
    found
}

/// The loops of a directed graph, each as its path from its smallest module back to it
/// (`[a, b, a]`). One loop per back edge of a depth-first search: the graph has a loop exactly
/// when the search finds a back edge, and the loops reported cover every back edge, so cutting
/// them all leaves no loop (a graph with many overlapping loops is not listed exhaustively).
fn cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    #[derive(PartialEq)]
    enum Visit {
        OnPath,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        visits: &mut BTreeMap<&'a str, Visit>,
        path: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<&'a str>>,
    ) {
        visits.insert(node, Visit::OnPath);
        path.push(node);
        for &next in graph.get(node).into_iter().flatten() {
            match visits.get(next) {
                None => visit(next, graph, visits, path, found),
                Some(Visit::OnPath) => {
                    let start = path.iter().position(|&n| n == next).expect("next is on the path");
                    let mut cycle = path[start..].to_vec();
                    // Start at the smallest module so the same loop always reads the same.
                    let smallest = (0..cycle.len()).min_by_key(|&i| cycle[i]).expect("not empty");
                    cycle.rotate_left(smallest);
                    cycle.push(cycle[0]);
                    found.insert(cycle);
                }
                Some(Visit::Done) => {}
            }
        }
        path.pop();
        visits.insert(node, Visit::Done);
    }

    let mut visits = BTreeMap::new();
    let mut found = BTreeSet::new();
    for &node in graph.keys() {
        if !visits.contains_key(node) {
            visit(node, graph, &mut visits, &mut Vec::new(), &mut found);
        }
    }
    found.into_iter().collect()
}

/// One `crate::` path: the top-level module it names (`*` for a glob of the crate root), the
/// path as written (whitespace collapsed) and its 1-based line.
#[derive(Debug)]
struct Import {
    module: String,
    path: String,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with every comment (line, doc, nested block), string literal (plain, byte, C, raw
/// with any number of `#`) and char literal replaced by spaces. Newlines are kept, so a line
/// number in the result is a line number in `text`.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = String::with_capacity(text.len());
    let blank = |range: std::ops::Range<usize>, out: &mut String| {
        out.extend(chars[range].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < chars.len() {
        let end = match (chars[i], at(i + 1), raw_string_hashes(&chars, i)) {
            ('/', Some('/'), _) => {
                (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len())
            }
            ('/', Some('*'), _) => {
                let mut depth = 0;
                let mut j = i;
                while j < chars.len() {
                    match (chars[j], at(j + 1)) {
                        ('/', Some('*')) => (depth, j) = (depth + 1, j + 2),
                        ('*', Some('/')) => (depth, j) = (depth - 1, j + 2),
                        _ => j += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                j.min(chars.len())
            }
            ('"', _, _) => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    // An escape is two characters, so `\"` does not end the string.
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                (j + 1).min(chars.len())
            }
            (_, _, Some(hashes)) => {
                let body = i + 1 + hashes + 1;
                // A raw string ends at the first `"` followed by as many `#` as it opened with.
                (body..chars.len())
                    .find(|&j| chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == Some('#')))
                    .map_or(chars.len(), |j| j + 1 + hashes)
            }
            ('\'', _, _) => match char_literal_len(&chars, i) {
                Some(len) => i + len,
                // A lifetime or a label: code, kept.
                None => i,
            },
            _ => i,
        };
        if end > i {
            blank(i..end, &mut out);
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The number of `#` of the raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`) that starts with
/// the `r` at `i`, or `None` when that `r` is not the start of one (`r#ident`, `bar"`).
fn raw_string_hashes(chars: &[char], i: usize) -> Option<usize> {
    let starts_token = |k: usize| k == 0 || !is_ident_char(chars[k - 1]);
    let prefixed = i > 0 && matches!(chars[i - 1], 'b' | 'c') && starts_token(i - 1);
    if chars[i] != 'r' || !(starts_token(i) || prefixed) {
        return None;
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The length of the char literal starting with the `'` at `i` (`'x'`, `'\n'`, `'\''`,
/// `'\u{1F600}'`), or `None` when that `'` starts a lifetime or a label (`'a`, `'outer:`).
fn char_literal_len(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1) {
        Some('\\') => {
            // Skip the escaped character itself (it may be `'`), then find the closing quote;
            // the longest escape, `\u{10FFFF}`, keeps it within a dozen characters.
            let close = (i + 3..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')?;
            Some(close + 1 - i)
        }
        Some('\n') | None => None,
        // A lifetime is never directly followed by a quote, so `'x'` is always a char.
        Some(_) => (chars.get(i + 2) == Some(&'\'')).then_some(3),
    }
}

/// Every `crate::` path in `code` (already stripped of comments and literals), with one entry
/// per first-level item of a `crate::{…}` group.
fn crate_imports(code: &str) -> Vec<Import> {
    let chars: Vec<char> = code.chars().collect();
    let mut lines = Vec::with_capacity(chars.len());
    let mut line = 1;
    for &c in &chars {
        lines.push(line);
        line += usize::from(c == '\n');
    }
    let scanner = Scanner { chars: &chars, lines: &lines };
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = is_ident_start(chars[i]) && (i == 0 || !is_ident_char(chars[i - 1]));
        if !starts_word {
            i += 1;
            continue;
        }
        let word_end = scanner.ident_end(i);
        // `$crate` is a macro's path to its own crate root, resolved where the macro is used.
        let is_crate = scanner.text(i, word_end) == "crate" && (i == 0 || chars[i - 1] != '$');
        if is_crate && let Some(after) = scanner.double_colon(word_end) {
            let start = scanner.skip_space(after);
            match chars.get(start) {
                Some('{') => scanner.group(start, &mut found),
                Some(_) => scanner.item(start, start, chars.len(), &mut found),
                None => {}
            }
        }
        i = word_end;
    }
    found
}

/// Reads paths out of stripped source text, by character index.
struct Scanner<'a> {
    chars: &'a [char],
    /// The 1-based line of each character.
    lines: &'a [usize],
}

impl Scanner<'_> {
    fn text(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }

    fn ident_end(&self, start: usize) -> usize {
        (start..self.chars.len())
            .find(|&j| !is_ident_char(self.chars[j]))
            .unwrap_or(self.chars.len())
    }

    fn skip_space(&self, start: usize) -> usize {
        (start..self.chars.len())
            .find(|&j| !self.chars[j].is_whitespace())
            .unwrap_or(self.chars.len())
    }

    /// The index just after a `::` that follows `start` (whitespace allowed before it).
    fn double_colon(&self, start: usize) -> Option<usize> {
        let j = self.skip_space(start);
        (self.chars.get(j) == Some(&':') && self.chars.get(j + 1) == Some(&':')).then_some(j + 2)
    }

    /// The index of the `}` closing the `{` at `open`, or the end of the text.
    fn group_end(&self, open: usize) -> usize {
        let mut depth = 0;
        for j in open..self.chars.len() {
            match self.chars[j] {
                '{' => depth += 1,
                '}' if depth == 1 => return j,
                '}' => depth -= 1,
                _ => {}
            }
        }
        self.chars.len()
    }

    /// The first-level items of the `crate::{…}` group opening at `open`.
    fn group(&self, open: usize, found: &mut Vec<Import>) {
        let close = self.group_end(open);
        let mut j = open + 1;
        while j < close {
            j = self.skip_space(j);
            if j >= close {
                break;
            }
            match self.chars[j] {
                ',' => j += 1,
                // `crate::{{a, b}}`: the inner items still name top-level modules.
                '{' => {
                    self.group(j, found);
                    j = self.group_end(j) + 1;
                }
                _ => {
                    // The item runs to the next comma outside its own nested groups.
                    let mut depth = 0;
                    let mut end = j;
                    while end < close && (depth > 0 || self.chars[end] != ',') {
                        match self.chars[end] {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        end += 1;
                    }
                    self.item(j, j, end, found);
                    j = end;
                }
            }
        }
    }

    /// The path at `start` (right after `crate::` or a group's `{`), which ends at `limit` at
    /// the latest; `display_from` is where its written text begins.
    fn item(&self, display_from: usize, start: usize, limit: usize, found: &mut Vec<Import>) {
        let module = if self.chars[start] == '*' {
            "*".to_owned()
        } else if is_ident_start(self.chars[start]) {
            self.text(start, self.ident_end(start))
        } else {
            return;
        };
        // `crate::{self, …}` names the crate root itself, not a module.
        if module == "self" {
            return;
        }
        let end = self.path_end(start).min(limit);
        let written = self.text(display_from, end);
        // One line in the failure message however the path was laid out.
        let path = written.split_whitespace().collect::<Vec<_>>().join(" ");
        let path = [(" ::", "::"), (":: ", "::"), ("{ ", "{"), (" }", "}"), (",}", "}")]
            .iter()
            .fold(path, |path, (from, to)| path.replace(from, to));
        found.push(Import { module, path: format!("crate::{path}"), line: self.lines[start] });
    }

    /// The end of the path starting at `start`: segments joined by `::`, ending with a name, a
    /// `*` or a `{…}` group (shown whole in the failure message).
    fn path_end(&self, start: usize) -> usize {
        let mut j = start;
        loop {
            match self.chars.get(j) {
                Some('*') => return j + 1,
                Some('{') => return (self.group_end(j) + 1).min(self.chars.len()),
                Some(&c) if is_ident_start(c) => j = self.ident_end(j),
                _ => return j,
            }
            match self.double_colon(j) {
                Some(after) => j = self.skip_space(after),
                None => return j,
            }
        }
    }
}

/// Every `.rs` file under `dir`, as (path relative to `root` with `/` separators, text).
fn rust_files(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
        if path.is_dir() {
            rust_files(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("the walk stays under its root");
            let relative: Vec<_> =
                relative.components().map(|c| c.as_os_str().to_string_lossy()).collect();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            files.push((relative.join("/"), text));
        }
    }
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    // An empty walk would pass vacuously.
    assert!(files.iter().any(|(path, _)| path == "lib.rs"), "no src/lib.rs under {src:?}");
    let found = violations(&files);
    assert!(
        found.is_empty(),
        "{} import(s) break the layer rules described in tests/integration/layers.rs and \
         docs/architecture.md:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_checker_catches_forbidden_imports_and_loops() {
    let file = |path: &str, text: &str| (path.to_owned(), text.to_owned());
    let files = [
        // The crate root and the binary are not checked.
        file("lib.rs", "pub mod store;\npub(crate) use crate::app::run;\n"),
        file("main.rs", "fn main() { orchestron::app::run() }\n"),
        // Forbidden by the map, and half of a loop with routing/mod.rs.
        file("store/writer.rs", "use std::fs;\nuse crate::routing::Target;\n"),
        // Own module and the test builders are always allowed.
        file("store/mod.rs", "use crate::store::writer;\n#[cfg(test)]\nuse crate::testing::b;\n"),
        file("routing/mod.rs", "use crate::{config::Routes, store::Store};\n"),
        // A group on one line: `config` is allowed, `app` is not.
        file("ingest/mod.rs", "use crate::{config::X, app::run};\n"),
        // A group over many lines, nested groups, a trailing comma.
        file(
            "publish/mod.rs",
            "use crate::{\n    event::Event,\n    config::{\n        A,\n        B,\n    },\n    \
             relay\n        ::Plan,\n};\n",
        ),
        // `crate::store` in every place that is not code; only the last import is real.
        file(
            "delivery/mod.rs",
            r##"//! Docs naming crate::store::Store.
/// See [`crate::store`].
/** crate::store */
/* outer /* nested */ crate::store::X */
// use crate::store::X;
fn f<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer x } }
const S: &str = "crate::store::X \" crate::store::Y";
const R: &str = r#"crate::store "quoted" "#;
const B: &[u8] = br"crate::store";
const C: [char; 4] = ['"', '\'', '\\', '\u{1F600}'];
pub(crate) fn g() {}
pub(crate) struct P;
macro_rules! m { () => { $crate::store::X } }
fn h() { let _ = mycrate::store::X; }
use crate::event::Event;
use crate :: telemetry :: Metrics;
"##,
        ),
        // `testing` may import anything but app and cli.
        file("testing/mod.rs", "use crate::{store::Store, relay::Plan, app::App};\n"),
        file("foo.rs", "use crate::event::Event;\n"),
    ];
    let found = violations(&files);
    let report = found.join("\n");
    let reports = |needle: &str| found.iter().any(|v| v.contains(needle));

    assert!(
        reports(
            "src/store/writer.rs:2: store imports routing (crate::routing::Target); \
             allowed: event, delivery, config, telemetry, tasks; \
             rule: store imports nothing from routing, publish, relay, ingest, live, admin"
        ),
        "{report}"
    );
    assert!(
        reports(
            "src/ingest/mod.rs:1: ingest imports app (crate::app::run); allowed: event, \
             delivery, config, telemetry, watch, tasks, systemd, validate, routing, sources, \
             publish, store, server, live, sync; rule: nothing imports app"
        ),
        "{report}"
    );
    assert!(
        reports("src/publish/mod.rs:7: publish imports relay (crate::relay::Plan); allowed:"),
        "{report}"
    );
    assert!(
        reports("src/delivery/mod.rs:16: delivery imports telemetry (crate::telemetry::Metrics)"),
        "the import after the comments and literals is found on its own line:\n{report}"
    );
    assert!(!reports("delivery imports store"), "comments and literals are not code:\n{report}");
    assert!(reports("src/testing/mod.rs:1: testing imports app (crate::app::App)"), "{report}");
    assert!(
        reports(
            "src/routing/mod.rs:1: routing imports store (crate::store::Store); allowed: event, \
             delivery, config"
        ),
        "{report}"
    );
    assert!(
        reports(
            "import loop between top-level modules: routing -> store -> routing \
             (routing -> store at src/routing/mod.rs:1 crate::store::Store; \
             store -> routing at src/store/writer.rs:2 crate::routing::Target)"
        ),
        "{report}"
    );
    assert!(
        reports("src/foo.rs: top-level module foo is not in the layer map; add it to"),
        "{report}"
    );
    // Nothing else: no false alarm from the crate root, own-module, `testing` or comments.
    assert_eq!(found.len(), 8, "{report}");

    // The map itself points down, so code that follows it cannot loop.
    let map: BTreeMap<&str, BTreeSet<&str>> = MODULES
        .iter()
        .map(|&m| {
            let allowed = allowed_imports(m).expect("every module in MODULES is in the map");
            (m, allowed.into_iter().collect())
        })
        .collect();
    assert_eq!(cycles(&map), Vec::<Vec<&str>>::new(), "the layer map has a loop");
}

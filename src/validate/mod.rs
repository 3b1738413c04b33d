//! JSON Schema validation of event bodies, one schema file per event type.
//!
//! `schemas.dir/<event_type>.json` holds the schema for that type; types without a file are
//! accepted unvalidated. Schemas are compiled once at load; remote `$ref`s are not fetched
//! (the crate is built without network resolution), so validation never waits on the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::EventType;

/// Most violations reported in one 422 answer; a huge invalid body must not make a huge reply.
const MAX_VIOLATIONS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema directory {}", .dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("{}: {message}", .file.display())]
    File { file: PathBuf, message: String },
}

/// One reason a body failed its schema, as reported to the sender.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value in the body (`""` is the whole body).
    pub pointer: String,
    pub message: String,
}

/// Compiled schemas by event type.
#[derive(Default)]
pub struct SchemaRegistry {
    validators: HashMap<String, jsonschema::Validator>,
    /// The schema documents as loaded, for `GET /admin/schemas/{event_type}`.
    documents: HashMap<String, serde_json::Value>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.validators.keys()).finish()
    }
}

impl SchemaRegistry {
    /// Loads and compiles every `*.json` file in `dir`. Any unreadable or invalid schema fails
    /// the whole load: a half-loaded registry would accept what it should refuse.
    pub fn load(dir: Option<&Path>) -> Result<Self, SchemaError> {
        let mut registry = Self::default();
        let Some(dir) = dir else { return Ok(registry) };
        let entries = std::fs::read_dir(dir)
            .map_err(|source| SchemaError::Dir { dir: dir.to_owned(), source })?;
        for entry in entries {
            let path =
                entry.map_err(|source| SchemaError::Dir { dir: dir.to_owned(), source })?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file_error = |message: String| SchemaError::File { file: path.clone(), message };
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let ty = EventType::parse(stem)
                .map_err(|e| file_error(format!("file name is not an event type: {e}")))?;
            let text = std::fs::read(&path).map_err(|e| file_error(e.to_string()))?;
            let schema: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| file_error(format!("not JSON: {e}")))?;
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| file_error(format!("not a valid JSON Schema: {e}")))?;
            registry.validators.insert(ty.as_str().to_owned(), validator);
            registry.documents.insert(ty.as_str().to_owned(), schema);
        }
        Ok(registry)
    }

    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// The event types that have a schema.
    pub fn types(&self) -> Vec<String> {
        self.validators.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// The schema document of `ty` as it was loaded, if it has one.
    pub fn document(&self, ty: &str) -> Option<&serde_json::Value> {
        self.documents.get(ty)
    }

    /// Checks `body` against the schema of `ty`, if there is one.
    pub fn validate(&self, ty: &EventType, body: &serde_json::Value) -> Result<(), Vec<Violation>> {
        let Some(validator) = self.validators.get(ty.as_str()) else { return Ok(()) };
        let violations: Vec<Violation> = validator
            .iter_errors(body)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation { pointer: e.instance_path().to_string(), message: e.to_string() })
            .collect();
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_by_type_and_reports_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["order_id"],
            "properties": { "order_id": { "type": "integer" } }
        });
        std::fs::write(dir.path().join("order.created.json"), schema.to_string()).unwrap();
        std::fs::write(dir.path().join("README.txt"), "ignored").unwrap();
        let reg = SchemaRegistry::load(Some(dir.path())).unwrap();
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.document("order.created"), Some(&schema));
        assert_eq!(reg.document("other"), None);
        let ty = EventType::parse("order.created").unwrap();
        assert!(reg.validate(&ty, &json!({"order_id": 1})).is_ok());
        let v = reg.validate(&ty, &json!({"order_id": "x"})).unwrap_err();
        assert_eq!(v[0].pointer, "/order_id");
        let v = reg.validate(&ty, &json!({})).unwrap_err();
        assert_eq!(v[0].pointer, "");
        assert!(v[0].message.contains("order_id"));
        let other = EventType::parse("other").unwrap();
        assert!(reg.validate(&other, &json!("anything")).is_ok());
    }

    #[test]
    fn a_broken_schema_fails_the_load_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), r#"{"type": 12}"#).unwrap();
        let err = SchemaRegistry::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        assert!(SchemaRegistry::load(Some(&dir.path().join("missing"))).is_err());
    }
}

//! The `notebook` tool's arguments on the wire: one flat object whose `action` picks a
//! `NotebookAction`. Which actions exist and which fields each reads is read off the derived
//! schemas of `NotebookTarget` and `NotebookAction`, so decoding and the advertised input
//! schema cannot drift apart. Nothing here acts on the arguments.

use std::sync::LazyLock;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::{NotebookAction, NotebookParams, NotebookTarget};

/// One action as its schema describes it.
struct Action {
    name: String,
    description: String,
    /// The fields it reads, with their schemas.
    fields: Map<String, Value>,
    required: Vec<String>,
}

/// The actions and the target's fields, read off the derived schemas. `NotebookAction` is
/// externally tagged, so each variant's schema is an object whose one property, the action's
/// name, holds that action's fields.
struct Shape {
    actions: Vec<Action>,
    target: Map<String, Value>,
}

impl Shape {
    fn of(generator: &mut SchemaGenerator) -> Self {
        let actions = NotebookAction::json_schema(generator)
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|variant| {
                let (name, inner) = variant.get("properties")?.as_object()?.iter().next()?;
                Some(Action {
                    name: name.clone(),
                    description: text(variant.get("description")),
                    fields: object(inner.get("properties")),
                    required: inner
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|field| field.as_str().map(str::to_string))
                        .collect(),
                })
            })
            .collect();
        let target = object(NotebookTarget::json_schema(generator).get("properties"));
        Self { actions, target }
    }

    fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|action| action.name == name)
    }

    /// Every field some action reads, each once, in order.
    fn action_fields(&self) -> Vec<&String> {
        let mut fields: Vec<&String> = Vec::new();
        for field in self.actions.iter().flat_map(|action| action.fields.keys()) {
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        fields
    }

    fn knows(&self, field: &str) -> bool {
        field == "action"
            || self.target.contains_key(field)
            || self.actions.iter().any(|a| a.fields.contains_key(field))
    }

    fn field_list(&self) -> String {
        std::iter::once(&"action".to_string())
            .chain(self.target.keys())
            .chain(self.action_fields())
            .map(|field| format!("`{field}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn action_list(&self) -> String {
        let names: Vec<&str> = self.actions.iter().map(|a| a.name.as_str()).collect();
        match names.split_last() {
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

fn text(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn object(value: Option<&Value>) -> Map<String, Value> {
    value
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

static SHAPE: LazyLock<Shape> = LazyLock::new(|| Shape::of(&mut SchemaGenerator::default()));

/// Decodes the flat arguments as the flat struct before did: unknown fields and actions are
/// refused, a field of another action is type-checked and then ignored, and every error names
/// the field (or the action) and what is allowed.
pub(super) fn decode(mut fields: Map<String, Value>) -> Result<NotebookParams, String> {
    let shape = &*SHAPE;
    if let Some(unknown) = fields.keys().find(|field| !shape.knows(field)) {
        return Err(format!(
            "{unknown}: unknown field `{unknown}`, expected one of {}",
            shape.field_list()
        ));
    }
    let name: String = match fields.remove("action") {
        Some(value) => serde_json::from_value(value).map_err(|e| format!("action: {e}"))?,
        None => return Err("missing field `action`".to_string()),
    };
    let Some(action) = shape.action(&name) else {
        return Err(format!(
            "unknown action {name:?}: use {}",
            shape.action_list()
        ));
    };
    let (target, rest): (Map<_, _>, Map<_, _>) = fields
        .into_iter()
        .partition(|(field, _)| shape.target.contains_key(field));
    let (own, others): (Map<_, _>, Map<_, _>) = rest
        .into_iter()
        .partition(|(field, _)| action.fields.contains_key(field));
    for (field, value) in others {
        check_type(shape, field, value)?;
    }
    let target = serde_path_to_error::deserialize(Value::Object(target))
        .map_err(|error| format!("{}: {}", error.path(), error.inner()))?;
    let tagged = Value::Object(Map::from_iter([(name.clone(), Value::Object(own))]));
    let action = serde_path_to_error::deserialize(tagged).map_err(|error| {
        let path: Vec<String> = error.path().iter().skip(1).map(|s| s.to_string()).collect();
        let inner = error.inner().to_string();
        match inner.strip_prefix("missing field `") {
            Some(rest) if path.is_empty() => {
                format!(
                    "{} is required for action {name}",
                    rest.trim_end_matches('`')
                )
            }
            _ if path.is_empty() => inner,
            _ => format!("{}: {inner}", path.join(".")),
        }
    })?;
    Ok(NotebookParams { target, action })
}

/// Checks a field another action reads against that action's type, so a wrongly typed field
/// is refused whichever action the call names: decoding it alone as part of that action fails
/// on the field itself before it fails for the fields left out.
fn check_type(shape: &Shape, field: String, value: Value) -> Result<(), String> {
    let Some(reader) = shape.actions.iter().find(|a| a.fields.contains_key(&field)) else {
        return Ok(());
    };
    let alone = json!({ reader.name.as_str(): { field.as_str(): value } });
    match serde_path_to_error::deserialize::<_, NotebookAction>(alone) {
        Err(error) if error.path().iter().count() > 1 => Err(format!("{field}: {}", error.inner())),
        _ => Ok(()),
    }
}

/// The input schema clients see: one object listing every field once (MCP wants an object
/// at the top, and some clients refuse `oneOf` there), `action` with its allowed values and
/// what each reads, and each field's description naming the actions that read it.
pub(super) fn schema(generator: &mut SchemaGenerator) -> Schema {
    let shape = Shape::of(generator);
    let mut properties = Map::new();
    let actions: Vec<String> = shape
        .actions
        .iter()
        .map(|action| {
            let reads: Vec<String> = action
                .fields
                .keys()
                .map(|field| match action.required.contains(field) {
                    true => field.clone(),
                    false => format!("{field}?"),
                })
                .collect();
            match reads.is_empty() {
                true => format!("{}: {}", action.name, action.description),
                false => format!(
                    "{} ({}): {}",
                    action.name,
                    reads.join(", "),
                    action.description
                ),
            }
        })
        .collect();
    properties.insert(
        "action".to_string(),
        json!({
            "type": "string",
            "enum": shape.actions.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            "description": format!("What to do, and the fields it reads (? when optional):\n{}", actions.join("\n")),
        }),
    );
    properties.extend(shape.target.clone());
    for field in shape.action_fields() {
        let readers: Vec<&Action> = shape
            .actions
            .iter()
            .filter(|action| action.fields.contains_key(field))
            .collect();
        let mut described: Vec<(Vec<&str>, String)> = Vec::new();
        for reader in &readers {
            let description = text(reader.fields[field].get("description"));
            match described.iter_mut().find(|(_, d)| *d == description) {
                Some((names, _)) => names.push(&reader.name),
                None => described.push((vec![&reader.name], description)),
            }
        }
        let mut property = object(readers.first().map(|reader| &reader.fields[field]));
        let description = described
            .iter()
            .map(|(names, description)| format!("{}: {description}", names.join(", ")))
            .collect::<Vec<_>>()
            .join(" ");
        property.insert("description".to_string(), Value::String(description));
        properties.insert(field.clone(), Value::Object(property));
    }
    schemars::json_schema!({
        "type": "object",
        "properties": properties,
        "required": ["action"],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mcp::params::Engine;
    use crate::notebook::ExportTo;

    fn parse(value: Value) -> Result<NotebookParams, String> {
        serde_path_to_error::deserialize(value).map_err(|e| e.inner().to_string())
    }

    #[test]
    fn flat_arguments_pick_an_action_with_its_fields() {
        let params = parse(json!({"action": "run", "code": "1", "notebook_id": "nb"})).unwrap();
        assert_eq!(params.target.notebook_id.as_deref(), Some("nb"));
        assert!(
            matches!(params.action, NotebookAction::Run { ref code, save_dfs: false } if code == "1")
        );
        let params = parse(json!({"action": "datasets.sql", "query": "SELECT 1"})).unwrap();
        assert!(matches!(
            params.action,
            NotebookAction::Query {
                limit_preview: 1000,
                engine: Engine::Duckdb,
                ..
            }
        ));
        let params = parse(json!({"action": "export"})).unwrap();
        assert!(matches!(
            params.action,
            NotebookAction::Export {
                export_to: ExportTo::Both
            }
        ));
    }

    #[test]
    fn fields_of_other_actions_are_type_checked_and_ignored_and_unknown_ones_refused() {
        let params =
            parse(json!({"action": "cells", "code": "x", "limit_preview": 5, "engine": "duckdb"}));
        assert!(matches!(params.unwrap().action, NotebookAction::Cells {}));
        let error = parse(json!({"action": "cells", "code": 5})).unwrap_err();
        assert!(
            error.starts_with("code: invalid type: integer `5`"),
            "{error}"
        );
        let error = parse(json!({"action": "cells", "bogus": 1})).unwrap_err();
        assert!(
            error.starts_with("bogus: unknown field `bogus`, expected one of `action`"),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_field_or_the_action() {
        for (arguments, expected) in [
            (json!({}), "missing field `action`"),
            (
                json!({"action": 5}),
                "action: invalid type: integer `5`, expected a string",
            ),
            (
                json!({"action": "explode"}),
                "unknown action \"explode\": use run, cells",
            ),
            (json!({"action": "run"}), "code is required for action run"),
            (
                json!({"action": "run", "code": 5}),
                "code: invalid type: integer `5`",
            ),
            (
                json!({"action": "cell", "cell_index": "one"}),
                "cell_index: invalid type",
            ),
            (
                json!({"action": "export", "export_to": "pdf"}),
                "export_to: unknown variant `pdf`",
            ),
            (
                json!({"action": "datasets.list", "engine": "sqlite"}),
                "engine: unknown variant",
            ),
            (
                json!({"action": "cells", "session_id": 3}),
                "session_id: invalid type",
            ),
            (
                json!({"action": "datasets.sql"}),
                "query is required for action datasets.sql",
            ),
        ] {
            let error = parse(arguments.clone()).unwrap_err();
            assert!(error.starts_with(expected), "{arguments}: {error}");
        }
    }

    #[test]
    fn the_input_schema_is_one_object_listing_every_field() {
        let schema = rmcp::handler::server::common::schema_for_input::<NotebookParams>().unwrap();
        assert_eq!(schema["type"], "object");
        assert!(schema.get("oneOf").is_none());
        let properties = schema["properties"].as_object().unwrap();
        for field in [
            "action",
            "notebook_id",
            "code",
            "save_dfs",
            "dataset_name",
            "paths",
            "format",
            "engine",
            "query",
            "limit_preview",
            "cell_index",
            "export_to",
            "session_id",
        ] {
            assert!(properties.contains_key(field), "{field}");
        }
        assert_eq!(properties["code"]["description"], "run: the cell's code.");
        assert_eq!(properties["limit_preview"]["default"], 1000);
        assert_eq!(properties["action"]["enum"].as_array().unwrap().len(), 10);
        for action in properties["action"]["enum"].as_array().unwrap() {
            let error = parse(json!({"action": action})).err().unwrap_or_default();
            assert!(!error.contains("unknown action"), "{action}: {error}");
        }
    }
}

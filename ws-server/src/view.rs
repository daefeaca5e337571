//! Subscription views: which events a subscription gets, and in what form.
//!
//! A view is a table, a filter and a column selection (PostgREST syntax, `protocol::filter`),
//! compiled once when the subscription is made, with the token's scope ANDed in: nothing a
//! client asks for can widen the scope. An event is parsed once per replica ([`Parsed`], shared
//! by every connection through the hub) and each view decides from the parsed rows:
//!
//! | operation | `old` in view | `order` in view | delivered as |
//! |---|---|---|---|
//! | INSERT | – | yes | INSERT |
//! | DELETE | – | yes (the deleted row) | DELETE |
//! | UPDATE | yes | yes | UPDATE |
//! | UPDATE | no | yes | UPDATE, `"view":"enter"` (the row enters the view) |
//! | UPDATE | yes (or unknown) | no | UPDATE, `"view":"leave"` (remove it) |
//!
//! A client that upserts on INSERT/UPDATE and removes on DELETE or `"view":"leave"` always
//! holds exactly the rows its filter selects. Rows the scope does not allow are never sent:
//! when a row leaves the scope, `order` carries only its key; `old` is left out when the old
//! row was outside the scope.

use std::sync::{Arc, OnceLock};

use protocol::{
    event::Operation,
    filter::{Filter, FilterError, Select},
    log::frame,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The row key: always sent, whatever the selection.
pub(crate) const KEY: &str = "id";

/// What a subscription asks for, as it arrives (URL parameters or a `subscribe` frame).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Filter strings (`status=eq.pending`), ANDed.
    pub(crate) filter: Vec<String>,
    /// `id,status,amount`, or `None` for every column.
    pub(crate) select: Option<String>,
    /// Only events of this table.
    pub(crate) table: Option<String>,
}

/// The widest view a token allows (everything when auth is off).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub(crate) filter: Filter,
    pub(crate) select: Option<Select>,
}

impl Scope {
    /// The scope of a token's `filter` and `select` claims.
    pub(crate) fn from_claims(filter: &[String], select: Option<&[String]>) -> Result<Self, String> {
        let filter = Filter::parse(filter.iter().map(String::as_str))
            .map_err(|e| format!("the token's filter claim is invalid: {e}"))?;
        let select = select
            .map(|cols| Select::parse(&cols.join(",")))
            .transpose()
            .map_err(|e| format!("the token's select claim is invalid: {e}"))?;
        Ok(Self { filter, select })
    }
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewError {
    #[error("invalid filter: {0}")]
    Filter(#[from] FilterError),
    #[error("invalid select: {0}")]
    Select(FilterError),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "too many filters: {given} (the limit is {limit}, WS_MAX_FILTERS); combine values with in, e.g. status=in.(pending,paid)"
    )]
    TooManyFilters { given: usize, limit: usize },
    #[error("invalid table {0:?}: expected a table name, e.g. table=orders")]
    Table(String),
}

/// A compiled subscription view.
#[derive(Debug, Clone)]
pub(crate) struct View {
    table: Option<String>,
    /// The client's filter ANDed with the scope's.
    filter: Filter,
    /// The scope's filter alone: what decides whether a row may be shown at all.
    scope: Filter,
    select: Option<Select>,
    /// The client's own filter strings, kept to recompile under a new scope (`auth` frame).
    spec: Spec,
}

impl View {
    /// Compiles `spec` within `scope`.
    pub(crate) fn compile(spec: &Spec, scope: &Scope, max_filters: usize) -> Result<Self, ViewError> {
        if spec.filter.len() > max_filters {
            return Err(ViewError::TooManyFilters { given: spec.filter.len(), limit: max_filters });
        }
        if let Some(table) = &spec.table
            && (table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        {
            return Err(ViewError::Table(table.clone()));
        }
        let own = Filter::parse(spec.filter.iter().map(String::as_str))?;
        let select = match (&spec.select, &scope.select) {
            (None, allowed) => allowed.clone(),
            (Some(asked), None) => Some(Select::parse(asked).map_err(ViewError::Select)?),
            (Some(asked), Some(allowed)) => {
                let asked = Select::parse(asked).map_err(ViewError::Select)?;
                Some(asked.narrow(allowed).map_err(ViewError::Forbidden)?)
            }
        };
        Ok(Self {
            table: spec.table.clone(),
            filter: scope.filter.and(&own),
            scope: scope.filter.clone(),
            select,
            spec: spec.clone(),
        })
    }

    /// The same subscription under another scope (a refreshed token).
    pub(crate) fn rescoped(&self, scope: &Scope, max_filters: usize) -> Result<Self, ViewError> {
        Self::compile(&self.spec, scope, max_filters)
    }

    /// Whether every event is delivered exactly as the publisher wrote it.
    pub(crate) fn is_everything(&self) -> bool {
        self.table.is_none() && self.filter.is_empty() && self.select.is_none()
    }

    /// The filter that decides membership (client ∧ scope), for the replica's index.
    pub(crate) fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Whether a snapshot row of `table` is in the view.
    pub(crate) fn holds(&self, table: &str, row: &Map<String, Value>) -> bool {
        self.table.as_deref().is_none_or(|t| t == table) && self.filter.matches(row)
    }

    /// A snapshot row as this view shows it.
    pub(crate) fn project(&self, row: &Map<String, Value>) -> Map<String, Value> {
        match &self.select {
            Some(select) => select.project(row),
            None => row.clone(),
        }
    }

    /// How this view receives `event`, if at all.
    pub(crate) fn route(&self, event: &Parsed) -> Option<Delivery> {
        if self.table.as_deref().is_some_and(|t| t != event.table) {
            return None;
        }
        let new_in = self.filter.matches(&event.order);
        if event.operation != Operation::Update {
            return new_in.then_some(Delivery::Change);
        }
        // Without `old` (an old trigger), whether the row was in the view is unknown: a row
        // not in it now is sent as leaving, which a client without it ignores.
        let old_in = event.old.as_ref().is_none_or(|old| self.filter.matches(old));
        match (old_in, new_in) {
            (true, true) => Some(Delivery::Change),
            (false, true) => Some(Delivery::Enter),
            (true, false) => Some(Delivery::Leave),
            (false, false) => None,
        }
    }

    /// The event frame for this view (without `subs`).
    pub(crate) fn render(&self, event: &Parsed, delivery: Delivery) -> String {
        let shown = |row: &Map<String, Value>| self.scope.matches(row);
        let order = if delivery == Delivery::Leave && !shown(&event.order) {
            key_only(&event.order)
        } else {
            self.project(&event.order)
        };
        let old = event.old.as_ref().filter(|old| shown(old)).map(|old| self.project(old));
        let body = Body {
            id: event.id,
            table: &event.table,
            operation: event.operation,
            order: &order,
            old: old.as_ref(),
            ts: event.ts.as_deref(),
            view: match delivery {
                Delivery::Change => None,
                Delivery::Enter => Some("enter"),
                Delivery::Leave => Some("leave"),
            },
        };
        let json = serde_json::to_string(&body).expect("event bodies always serialize");
        match (&event.epoch, event.pos) {
            // `frame` keeps the publisher's prefix, which SSE reads its `id:` from.
            (Some(epoch), Some(pos)) => frame(epoch, pos, &json[1..]),
            _ => format!(r#"{{"type":"event",{}"#, &json[1..]),
        }
    }
}

fn key_only(row: &Map<String, Value>) -> Map<String, Value> {
    row.get(KEY).map(|id| Map::from_iter([(KEY.to_owned(), id.clone())])).unwrap_or_default()
}

/// How an event reaches a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Delivery {
    /// As it happened.
    Change,
    /// An UPDATE that brings the row into the view.
    Enter,
    /// An UPDATE that takes the row out of the view.
    Leave,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    table: &'a str,
    operation: Operation,
    order: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<&'static str>,
}

/// An event frame parsed into rows, for views to decide on.
#[derive(Debug, Deserialize)]
pub(crate) struct Parsed {
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    #[serde(default)]
    pub(crate) pos: Option<u64>,
    #[serde(default)]
    pub(crate) id: Option<i64>,
    pub(crate) table: String,
    pub(crate) operation: Operation,
    pub(crate) order: Map<String, Value>,
    #[serde(default)]
    pub(crate) old: Option<Map<String, Value>>,
    #[serde(default)]
    pub(crate) ts: Option<String>,
}

impl Parsed {
    pub(crate) fn parse(frame: &str) -> Option<Self> {
        serde_json::from_str(frame).ok()
    }
}

/// An event's parse, done by the first connection that needs it and shared by the rest.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lazy(Arc<OnceLock<Option<Parsed>>>);

impl Lazy {
    pub(crate) fn get(&self, frame: &str) -> Option<&Parsed> {
        self.0.get_or_init(|| Parsed::parse(frame)).as_ref()
    }
}

/// Adds `"subs":[…]` to a rendered frame, naming the subscriptions it is for.
pub(crate) fn with_subs(frame: &str, subs: &[&str]) -> String {
    let names = serde_json::to_string(subs).expect("names serialize");
    let mut out = String::with_capacity(frame.len() + names.len() + 9);
    // Every frame is a JSON object; the field goes last, after the body.
    let end = frame.trim_end().strip_suffix('}').unwrap_or(frame);
    out.push_str(end);
    out.push_str(r#","subs":"#);
    out.push_str(&names);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(v: Value) -> Parsed {
        Parsed::parse(&v.to_string()).unwrap()
    }

    fn view(filter: &[&str], select: Option<&str>, scope: &Scope) -> View {
        let spec = Spec {
            filter: filter.iter().map(|s| (*s).to_owned()).collect(),
            select: select.map(Into::into),
            table: None,
        };
        View::compile(&spec, scope, 8).unwrap()
    }

    fn update(old: Value, new: Value) -> Parsed {
        parsed(
            json!({"type":"event","epoch":"e","pos":3,"id":9,"table":"orders","operation":"UPDATE","order":new,"old":old}),
        )
    }

    #[test]
    fn updates_enter_and_leave_the_view() {
        let v = view(&["status=eq.pending"], None, &Scope::default());
        let pending = json!({"id":1,"status":"pending"});
        let shipped = json!({"id":1,"status":"shipped"});
        assert_eq!(v.route(&update(pending.clone(), pending.clone())), Some(Delivery::Change));
        assert_eq!(v.route(&update(shipped.clone(), pending.clone())), Some(Delivery::Enter));
        assert_eq!(v.route(&update(pending.clone(), shipped.clone())), Some(Delivery::Leave));
        assert_eq!(v.route(&update(shipped.clone(), shipped)), None);
        let leave: Value =
            serde_json::from_str(&v.render(&update(pending.clone(), json!({"id":1,"status":"x"})), Delivery::Leave))
                .unwrap();
        assert_eq!(leave["view"], "leave");
        assert_eq!(leave["pos"], 3);
        assert_eq!(leave["order"]["status"], "x", "the client's own filter: the row may still be shown");
    }

    #[test]
    fn a_row_leaving_the_scope_shows_only_its_key() {
        let scope = Scope::from_claims(&["customer=eq.bob".into()], None).unwrap();
        let v = view(&[], None, &scope);
        let event = update(json!({"id":1,"customer":"bob","secret":1}), json!({"id":1,"customer":"eve","secret":2}));
        assert_eq!(v.route(&event), Some(Delivery::Leave));
        let out: Value = serde_json::from_str(&v.render(&event, Delivery::Leave)).unwrap();
        assert_eq!(out["order"], json!({"id":1}));
        assert_eq!(out["old"]["secret"], 1);
        let entering = update(json!({"id":1,"customer":"eve","secret":2}), json!({"id":1,"customer":"bob","secret":3}));
        let out: Value = serde_json::from_str(&v.render(&entering, Delivery::Enter)).unwrap();
        assert!(out.get("old").is_none(), "the old row was outside the scope: {out}");
    }

    #[test]
    fn select_projects_order_and_old_and_keeps_the_key() {
        let v = view(&[], Some("status"), &Scope::default());
        let out: Value =
            serde_json::from_str(&v.render(
                &update(json!({"id":1,"status":"a","x":1}), json!({"id":1,"status":"b","x":2})),
                Delivery::Change,
            ))
            .unwrap();
        assert_eq!(out["order"], json!({"id":1,"status":"b"}));
        assert_eq!(out["old"], json!({"id":1,"status":"a"}));
        assert!(
            v.render(&update(json!({}), json!({"id":1})), Delivery::Change)
                .starts_with(&protocol::log::frame_prefix("e"))
        );
    }

    #[test]
    fn a_select_outside_the_scope_is_refused_and_filters_only_narrow() {
        let scope = Scope::from_claims(&["customer=eq.bob".into()], Some(&["id".into(), "status".into()])).unwrap();
        let spec = Spec { select: Some("amount".into()), ..Spec::default() };
        assert!(matches!(View::compile(&spec, &scope, 8), Err(ViewError::Forbidden(_))));
        let wider = view(&["customer=eq.eve"], None, &scope);
        assert_eq!(
            wider.route(&parsed(json!({"table":"orders","operation":"INSERT","order":{"id":1,"customer":"eve"}}))),
            None
        );
        let or_null = view(&["customer=is.null"], None, &scope);
        assert_eq!(or_null.route(&parsed(json!({"table":"orders","operation":"INSERT","order":{"id":1}}))), None);
    }

    #[test]
    fn subs_are_appended_to_the_object() {
        let out = with_subs(r#"{"type":"event","pos":1}"#, &["a", "b\""]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["subs"], json!(["a", "b\""]));
        assert_eq!(v["pos"], 1);
    }
}

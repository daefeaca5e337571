//! What `table` shows, with no terminal in sight: the rows (folded from the snapshot and the
//! events), the columns and the sort, which cells changed lately, the pause queue, the scroll
//! position, the status line's numbers, and what each key does. Time is passed in, so tests
//! drive it without waiting.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use protocol::{
    event::Operation,
    frames::{EventFrame, SnapshotRow},
    log::Position,
};
use serde_json::{Map, Value};

/// How long a changed cell stays highlighted.
pub(super) const HIGHLIGHT: Duration = Duration::from_millis(1500);
/// The window events per second is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A row on screen: its id and its columns.
pub type RowRef<'a> = (i64, &'a Map<String, Value>);

/// One change to apply, or to queue while paused.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Replace every row (a snapshot).
    Snapshot {
        /// The rows.
        rows: Vec<SnapshotRow>,
        /// Where the snapshot stands.
        position: Option<Position>,
    },
    /// One event; `leave`: an UPDATE that moved the row out of the filtered view.
    Event {
        /// The event (boxed: it is much larger than a snapshot's handle).
        frame: Box<EventFrame>,
        /// The row left the view (`"view":"leave"`).
        leave: bool,
        /// Commit→receipt lag, from the event's `ts`.
        lag: Option<Duration>,
    },
}

impl Change {
    /// An event as the feed returned it; `raw` tells whether it carries `"view":"leave"`.
    pub fn event(frame: EventFrame, raw: &str, lag: Option<Duration>) -> Self {
        let leave = serde_json::from_str::<Value>(raw)
            .ok()
            .is_some_and(|v| v.get("view").and_then(Value::as_str) == Some("leave"));
        Self::Event { frame: Box::new(frame), leave, lag }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond a redraw.
    None,
    /// Leave the table.
    Quit,
    /// Subscribe again with these filters, from a fresh snapshot.
    Refilter(Vec<String>),
}

/// The table's whole state.
#[derive(Debug, Default)]
pub struct Model {
    rows: BTreeMap<i64, Map<String, Value>>,
    columns: Vec<String>,
    sort: usize,
    changed: HashMap<(i64, String), Instant>,
    paused: bool,
    queue: VecDeque<Change>,
    /// The first row shown.
    offset: usize,
    /// Rows that fit on screen, from the last draw (for PgUp/PgDn).
    page: usize,
    /// The filters in force, and the text being edited after `/`.
    filters: Vec<String>,
    editing: Option<String>,
    help: bool,
    /// The status line's parts.
    pub connection: String,
    pub replica: Option<String>,
    position: Option<Position>,
    arrivals: VecDeque<Instant>,
    lag: Option<Duration>,
    /// A message for the status line (a refused filter, a reset).
    pub notice: Option<String>,
}

impl Model {
    /// An empty table for a feed with `filters`.
    pub fn new(filters: Vec<String>) -> Self {
        Self { filters, connection: "connecting".to_owned(), page: 10, ..Self::default() }
    }

    /// Applies `change` now, or queues it while paused.
    pub fn push(&mut self, change: Change, now: Instant) {
        if let Change::Event { .. } = change {
            self.arrivals.push_back(now);
        }
        if self.paused {
            self.queue.push_back(change);
        } else {
            self.apply(change, now);
        }
    }

    fn apply(&mut self, change: Change, now: Instant) {
        match change {
            Change::Snapshot { rows, position } => {
                self.rows.clear();
                self.changed.clear();
                for row in rows {
                    if let Value::Object(fields) = row.order
                        && let Some(id) = fields.get("id").and_then(Value::as_i64)
                    {
                        self.learn_columns(&fields);
                        self.rows.insert(id, fields);
                    }
                }
                self.position = position;
                self.clamp();
            }
            Change::Event { frame, leave, lag } => {
                if let Some(position) = frame.epoch.clone().zip(frame.pos).map(|(epoch, pos)| Position { epoch, pos }) {
                    self.position = Some(position);
                }
                self.lag = lag.or(self.lag);
                let EventFrame { order, id: frame_id, operation, .. } = *frame;
                let Value::Object(fields) = order else { return };
                let Some(id) = fields.get("id").and_then(Value::as_i64).or(frame_id) else { return };
                if operation == Operation::Delete || leave {
                    self.rows.remove(&id);
                    self.changed.retain(|(row, _), _| *row != id);
                    self.clamp();
                    return;
                }
                self.learn_columns(&fields);
                let row = self.rows.entry(id).or_default();
                for (column, value) in fields {
                    if row.get(&column) != Some(&value) {
                        self.changed.insert((id, column.clone()), now + HIGHLIGHT);
                        row.insert(column, value);
                    }
                }
            }
        }
    }

    fn learn_columns(&mut self, fields: &Map<String, Value>) {
        for column in fields.keys() {
            if !self.columns.contains(column) {
                // `id` first: it is the row's name.
                if column == "id" {
                    self.columns.insert(0, column.clone());
                } else {
                    self.columns.push(column.clone());
                }
            }
        }
    }

    /// Forgets highlights that expired by `now`; returns the next expiry, if any.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.changed.retain(|_, until| *until > now);
        while self.arrivals.front().is_some_and(|t| now.duration_since(*t) > RATE_WINDOW) {
            self.arrivals.pop_front();
        }
        self.changed.values().min().copied()
    }

    /// Whether the cell was changed recently.
    pub fn is_changed(&self, id: i64, column: &str, now: Instant) -> bool {
        self.changed.get(&(id, column.to_owned())).is_some_and(|until| *until > now)
    }

    /// Events per second over the last few seconds.
    pub fn rate(&self, now: Instant) -> f64 {
        let recent = self.arrivals.iter().filter(|t| now.duration_since(**t) <= RATE_WINDOW).count();
        recent as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// The commit→screen lag of the last event that had a `ts`.
    pub fn lag(&self) -> Option<Duration> {
        self.lag
    }

    /// The position of the last change applied.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The columns, `id` first, then as they first appeared.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The column rows are sorted by.
    pub fn sort_column(&self) -> Option<&str> {
        self.columns.get(self.sort).map(String::as_str)
    }

    /// Every row, sorted by the sort column (numbers as numbers), ties by id.
    pub fn sorted(&self) -> Vec<RowRef<'_>> {
        let mut rows: Vec<_> = self.rows.iter().map(|(id, row)| (*id, row)).collect();
        if let Some(column) = self.sort_column() {
            rows.sort_by(|a, b| compare(a.1.get(column), b.1.get(column)).then(a.0.cmp(&b.0)));
        }
        rows
    }

    /// The rows on screen for a viewport of `height` rows (and remembers it for paging).
    pub fn visible(&mut self, height: usize) -> (usize, Vec<RowRef<'_>>) {
        self.page = height.max(1);
        self.clamp();
        let offset = self.offset;
        (offset, self.sorted().into_iter().skip(offset).take(height).collect())
    }

    fn clamp(&mut self) {
        self.offset = self.offset.min(self.rows.len().saturating_sub(self.page.max(1)));
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether changes are queued instead of applied, and how many wait.
    pub fn paused(&self) -> Option<usize> {
        self.paused.then_some(self.queue.len())
    }

    /// Pauses, or resumes and applies every queued change in order.
    pub fn toggle_pause(&mut self, now: Instant) {
        self.paused = !self.paused;
        if !self.paused {
            while let Some(change) = self.queue.pop_front() {
                self.apply(change, now);
            }
        }
    }

    /// The filters in force.
    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    /// The filter being edited, if any.
    pub fn editing(&self) -> Option<&str> {
        self.editing.as_deref()
    }

    /// Whether the help is shown.
    pub fn help(&self) -> bool {
        self.help
    }

    /// A new feed with `filters` starts: its snapshot replaces every row.
    pub fn refiltered(&mut self, filters: Vec<String>) {
        self.filters = filters;
        self.queue.clear();
        self.offset = 0;
    }

    /// What `key` does.
    pub fn key(&mut self, key: KeyEvent, now: Instant) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    let filters: Vec<String> =
                        text.split('&').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect();
                    self.editing = None;
                    return Action::Refilter(filters);
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => drop(text.pop()),
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') { Action::Quit } else { Action::None };
        }
        let last = self.rows.len().saturating_sub(1);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('/') => self.editing = Some(self.filters.join("&")),
            KeyCode::Char('s') => self.sort = (self.sort + 1) % self.columns.len().max(1),
            KeyCode::Char('p') => self.toggle_pause(now),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Down => self.offset = (self.offset + 1).min(last),
            KeyCode::Up => self.offset = self.offset.saturating_sub(1),
            KeyCode::PageDown => self.offset = (self.offset + self.page).min(last),
            KeyCode::PageUp => self.offset = self.offset.saturating_sub(self.page),
            KeyCode::Home => self.offset = 0,
            KeyCode::End => self.offset = last,
            _ => {}
        }
        self.clamp();
        Action::None
    }
}

/// Orders two cells: numbers numerically, before text; missing and null last.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let rank = |v: Option<&Value>| match v {
        Some(Value::Number(_)) => 0,
        Some(Value::Null) | None => 2,
        Some(_) => 1,
    };
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            x.as_f64().unwrap_or_default().total_cmp(&y.as_f64().unwrap_or_default())
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)).then_with(|| cell(a).cmp(&cell(b))),
    }
}

/// A cell's text: strings as they are, null and missing as empty, anything else as JSON.
pub(super) fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.chars().filter(|c| !c.is_control()).collect(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(op: Operation, pos: u64, order: Value) -> Change {
        Change::Event {
            frame: Box::new(EventFrame {
                epoch: Some("e".into()),
                pos: Some(pos),
                id: None,
                table: "orders".into(),
                operation: op,
                order,
                old: None,
                ts: None,
            }),
            leave: false,
            lag: Some(Duration::from_millis(20)),
        }
    }

    fn snapshot(orders: &[Value]) -> Change {
        Change::Snapshot {
            rows: orders.iter().map(|o| SnapshotRow { table: "orders".into(), order: o.clone() }).collect(),
            position: Some(Position { epoch: "e".into(), pos: 1 }),
        }
    }

    fn statuses(model: &Model) -> Vec<(i64, String)> {
        model.sorted().into_iter().map(|(id, row)| (id, cell(row.get("status")))).collect()
    }

    #[test]
    fn snapshot_then_events_update_in_place_and_deletes_remove() {
        let t = Instant::now();
        let mut model = Model::new(vec![]);
        model.push(snapshot(&[json!({"id": 2, "status": "new"}), json!({"id": 1, "status": "paid"})]), t);
        assert_eq!(statuses(&model), [(1, "paid".into()), (2, "new".into())]);
        assert_eq!(model.columns(), ["id", "status"]);
        model.push(event(Operation::Update, 2, json!({"id": 2, "status": "shipped"})), t);
        model.push(event(Operation::Insert, 3, json!({"id": 3, "status": "new", "amount": 5})), t);
        model.push(event(Operation::Delete, 4, json!({"id": 1})), t);
        assert_eq!(statuses(&model), [(2, "shipped".into()), (3, "new".into())]);
        assert_eq!(model.columns(), ["id", "status", "amount"]);
        assert_eq!(model.position().unwrap().pos, 4);
        assert_eq!(model.lag(), Some(Duration::from_millis(20)));
        // A row leaving the filtered view goes too.
        let Change::Event { frame, .. } = event(Operation::Update, 5, json!({"id": 3, "status": "void"})) else {
            unreachable!()
        };
        let raw = r#"{"type":"event","view":"leave","operation":"UPDATE","table":"orders","order":{"id":3}}"#;
        model.push(Change::event(*frame, raw, None), t);
        assert_eq!(statuses(&model), [(2, "shipped".into())]);
    }

    #[test]
    fn changed_cells_are_highlighted_until_they_expire() {
        let t = Instant::now();
        let mut model = Model::new(vec![]);
        model.push(snapshot(&[json!({"id": 1, "status": "new", "amount": 5})]), t);
        assert!(!model.is_changed(1, "status", t), "a snapshot highlights nothing");
        model.push(event(Operation::Update, 2, json!({"id": 1, "status": "paid", "amount": 5})), t);
        assert!(model.is_changed(1, "status", t));
        assert!(!model.is_changed(1, "amount", t), "an unchanged cell is not highlighted");
        assert_eq!(model.expire(t), Some(t + HIGHLIGHT));
        assert!(model.is_changed(1, "status", t + HIGHLIGHT - Duration::from_millis(1)));
        assert_eq!(model.expire(t + HIGHLIGHT), None);
        assert!(!model.is_changed(1, "status", t + HIGHLIGHT));
    }

    #[test]
    fn sort_cycles_through_the_columns_numbers_as_numbers() {
        let t = Instant::now();
        let mut model = Model::new(vec![]);
        model.push(
            snapshot(&[
                json!({"id": 1, "status": "b", "amount": 10}),
                json!({"id": 2, "status": "a", "amount": 9.5}),
                json!({"id": 3, "status": null, "amount": 100}),
            ]),
            t,
        );
        let ids = |m: &Model| m.sorted().into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!((model.sort_column(), ids(&model)), (Some("id"), vec![1, 2, 3]));
        model.key(KeyEvent::from(KeyCode::Char('s')), t);
        assert_eq!((model.sort_column(), ids(&model)), (Some("status"), vec![2, 1, 3]));
        model.key(KeyEvent::from(KeyCode::Char('s')), t);
        assert_eq!((model.sort_column(), ids(&model)), (Some("amount"), vec![2, 1, 3]));
        model.key(KeyEvent::from(KeyCode::Char('s')), t);
        assert_eq!(model.sort_column(), Some("id"));
    }

    #[test]
    fn pause_queues_changes_and_loses_none() {
        let t = Instant::now();
        let mut model = Model::new(vec![]);
        model.push(snapshot(&[json!({"id": 1, "status": "new"})]), t);
        model.key(KeyEvent::from(KeyCode::Char('p')), t);
        for pos in 2..12 {
            model.push(event(Operation::Insert, pos, json!({"id": pos, "status": "new"})), t);
        }
        model.push(event(Operation::Delete, 12, json!({"id": 1})), t);
        assert_eq!((model.paused(), model.len()), (Some(11), 1), "nothing applied while paused");
        model.key(KeyEvent::from(KeyCode::Char('p')), t);
        assert_eq!((model.paused(), model.len()), (None, 10));
        assert_eq!(model.position().unwrap().pos, 12);
        assert!(model.rate(t) > 0.0);
    }

    #[test]
    fn scrolling_stays_within_the_rows() {
        let t = Instant::now();
        let mut model = Model::new(vec![]);
        let orders: Vec<Value> = (1..=30).map(|id| json!({"id": id})).collect();
        model.push(snapshot(&orders), t);
        assert_eq!(model.visible(10).0, 0);
        model.key(KeyEvent::from(KeyCode::PageDown), t);
        assert_eq!(model.visible(10).0, 10);
        model.key(KeyEvent::from(KeyCode::End), t);
        let (offset, rows) = model.visible(10);
        assert_eq!((offset, rows.len(), rows.last().map(|r| r.0)), (20, 10, Some(30)));
        model.key(KeyEvent::from(KeyCode::Up), t);
        assert_eq!(model.visible(10).0, 19);
        model.key(KeyEvent::from(KeyCode::Home), t);
        assert_eq!(model.visible(10).0, 0);
        model.key(KeyEvent::from(KeyCode::Up), t);
        assert_eq!(model.visible(10).0, 0);
    }

    #[test]
    fn keys_quit_help_and_edit_the_filter() {
        let t = Instant::now();
        let mut model = Model::new(vec!["status=eq.new".into()]);
        assert_eq!(model.key(KeyEvent::from(KeyCode::Char('?')), t), Action::None);
        assert!(model.help());
        assert_eq!(model.key(KeyEvent::from(KeyCode::Char('x')), t), Action::None);
        assert!(!model.help());
        model.key(KeyEvent::from(KeyCode::Char('/')), t);
        assert_eq!(model.editing(), Some("status=eq.new"));
        for c in "&amount=gt.5".chars() {
            model.key(KeyEvent::from(KeyCode::Char(c)), t);
        }
        assert_eq!(
            model.key(KeyEvent::from(KeyCode::Enter), t),
            Action::Refilter(vec!["status=eq.new".into(), "amount=gt.5".into()])
        );
        assert_eq!(model.key(KeyEvent::from(KeyCode::Char('q')), t), Action::Quit);
        assert_eq!(model.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), t), Action::Quit);
        model.key(KeyEvent::from(KeyCode::Char('/')), t);
        assert_eq!(model.key(KeyEvent::from(KeyCode::Esc), t), Action::None, "Esc only cancels editing");
        assert_eq!(model.editing(), None);
    }
}

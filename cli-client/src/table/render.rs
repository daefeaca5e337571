//! Drawing the [`Model`] with ratatui: the header (the sort column marked), the rows with
//! recently changed cells highlighted, the status line, and the filter prompt and help when
//! they are open. Reads the model; changes nothing but its idea of the page height.

use std::time::Instant;

use jiff::tz::TimeZone;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table},
};

use super::model::{Model, cell};
use crate::clock;

const HELP: &[&str] = &[
    "q          quit (also Ctrl-C)",
    "/          edit the filter: PostgREST filters joined by &,",
    "           e.g. status=eq.pending&amount=gte.100; Enter applies",
    "           it with a fresh snapshot, Esc cancels",
    "s          sort by the next column",
    "↑ ↓        scroll one row",
    "PgUp PgDn  scroll one page",
    "Home End   first / last row",
    "p          pause: changes queue up, p again applies them all",
    "?          this help (any key closes it)",
];

/// Draws the whole screen, timestamps in `zone`.
pub(super) fn draw(frame: &mut Frame<'_>, model: &mut Model, zone: &TimeZone, now: Instant) {
    let [body, status] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(frame.area());
    table(frame, body, model, zone, now);
    frame.render_widget(Paragraph::new(status_line(model, now)), status);
    if let Some(text) = model.editing() {
        let area = Rect { y: status.y, ..status };
        let prompt =
            Line::from(vec![Span::styled("filter: ", Style::new().bold()), Span::raw(text.to_owned()), Span::raw("█")]);
        frame.render_widget(Clear, area);
        frame.render_widget(Paragraph::new(prompt), area);
    }
    if model.help() {
        let area = centered(frame.area(), 66, HELP.len() as u16 + 2);
        let lines: Vec<Line<'_>> = HELP.iter().map(|l| Line::raw(*l)).collect();
        frame.render_widget(Clear, area);
        frame.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")), area);
    }
}

fn table(frame: &mut Frame<'_>, area: Rect, model: &mut Model, zone: &TimeZone, now: Instant) {
    let columns = model.columns().to_vec();
    let sort = model.sort_column().map(str::to_owned);
    // Header row, then one row per order.
    let height = usize::from(area.height.saturating_sub(1));
    let (_, rows) = model.visible(height);
    // Room for the header and its sort marker, then for the widest cell shown (at most 40).
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count() + 2).collect();
    let body: Vec<Vec<String>> =
        rows.iter().map(|(_, row)| columns.iter().map(|c| local(cell(row.get(c)), zone)).collect()).collect();
    for cells in &body {
        for (width, text) in widths.iter_mut().zip(cells) {
            *width = (*width).max(text.chars().count()).min(40);
        }
    }
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    drop(rows);
    let header = Row::new(columns.iter().map(|c| {
        let name = if sort.as_deref() == Some(c.as_str()) { format!("{c} ▲") } else { c.clone() };
        Cell::from(name)
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let highlight = Style::new().fg(Color::Black).bg(Color::Yellow);
    let lines = body.into_iter().zip(ids).map(|(cells, id)| {
        Row::new(cells.into_iter().zip(&columns).map(|(text, column)| {
            let cell = Cell::from(text);
            if model.is_changed(id, column, now) { cell.style(highlight) } else { cell }
        }))
    });
    let widths = widths.into_iter().map(|w| Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX)));
    frame.render_widget(Table::new(lines, widths).header(header).column_spacing(2), area);
}

fn status_line(model: &Model, now: Instant) -> Line<'static> {
    let mut parts = vec![model.connection.clone()];
    if let Some(replica) = &model.replica {
        parts.push(format!("replica {replica}"));
    }
    parts.push(model.position().map_or_else(|| "pos –".to_owned(), |p| format!("pos {p}")));
    parts.push(format!("{:.1} ev/s", model.rate(now)));
    parts.push(model.lag().map_or_else(|| "lag –".to_owned(), |lag| format!("lag {}ms", lag.as_millis())));
    parts.push(format!("{} rows", model.len()));
    if !model.filters().is_empty() {
        parts.push(format!("filter {}", model.filters().join("&")));
    }
    let mut spans = vec![Span::styled(parts.join(" · "), Style::new().add_modifier(Modifier::REVERSED))];
    if let Some(queued) = model.paused() {
        spans.push(Span::styled(format!(" PAUSED ({queued} queued) "), Style::new().fg(Color::Black).bg(Color::Red)));
    }
    if let Some(notice) = &model.notice {
        spans.push(Span::raw(format!(" {notice}")));
    }
    spans.push(Span::raw("  ? help"));
    Line::from(spans)
}

/// A timestamp cell (`created_at`) in the local zone, to the second; anything else as it is.
fn local(text: String, zone: &TimeZone) -> String {
    match clock::parse_ts(&text) {
        Some(instant) if text.len() >= 19 => zone.to_datetime(instant).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        _ => text,
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_cells_are_shown_in_the_local_zone() {
        let new_york = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(local("2026-03-08T07:00:00.25+00:00".into(), &new_york), "2026-03-08 03:00:00");
        assert_eq!(local("2026-03-08 06:59:59+00".into(), &new_york), "2026-03-08 01:59:59");
        for text in ["pending", "49.9", ""] {
            assert_eq!(local(text.into(), &new_york), text);
        }
    }
}

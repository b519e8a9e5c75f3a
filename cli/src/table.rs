//! Tables for people: each column as wide as its content, the whole fitted to the terminal's
//! width. Every row stays on one line (so that `grep` still works): when the table is too wide,
//! the widest columns give way first and their cells are cut with `…`. `--json` is the form for
//! programs.
//!
//! The width is `COLUMNS` when set, else the terminal's when standard output is one; piped
//! output is not cut.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Where a column's cells sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table being filled.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// The gap between two columns.
const GAP: usize = 2;
/// No column is cut narrower than this (or its header).
const MIN_WIDTH: usize = 6;

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| *h).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Prints the table, fitted to [`width`].
    pub fn print(&self) {
        print!("{}", self.render(width()));
    }

    /// The table's lines, each at most `width` columns wide when a width is given (and the
    /// columns' minimums allow it).
    pub fn render(&self, width: Option<usize>) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].width())
                    .chain([self.headers[i].width()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        if let Some(width) = width {
            let floor: Vec<usize> = self
                .headers
                .iter()
                .zip(&widths)
                .map(|(h, w)| (*w).min(MIN_WIDTH.max(h.width())))
                .collect();
            let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * n.saturating_sub(1);
            while total(&widths) > width {
                // The widest column that may still give way gives a column.
                let Some(i) = (0..n)
                    .filter(|&i| widths[i] > floor[i])
                    .max_by_key(|&i| (widths[i], i))
                else {
                    break;
                };
                widths[i] -= 1;
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let cell = cut(cell, widths[i]);
                let pad = widths[i] - cell.width();
                let last = i + 1 == n;
                match self.aligns[i] {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(&cell);
                    }
                    Align::Left => {
                        line.push_str(&cell);
                        if !last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
                if !last {
                    line.push_str(&" ".repeat(GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `s` cut to `width` display columns, ending in `…` when cut.
fn cut(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// The width to fit: `COLUMNS` when set, else the terminal's when standard output is one.
pub fn width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(columns);
    }
    terminal_size::terminal_size().map(|(w, _)| usize::from(w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("NAME", Align::Left),
            ("WHY", Align::Left),
        ]);
        t.row(vec![
            "7".into(),
            "render-frames".into(),
            "incumbent CPU 87 % > 50 % for 40 ms".into(),
        ]);
        t.row(vec!["12".into(), "ü".into(), String::new()]);
        t
    }

    #[test]
    fn columns_are_as_wide_as_their_content() {
        assert_eq!(
            sample().render(None),
            "ID  NAME           WHY\n\
             \x207  render-frames  incumbent CPU 87 % > 50 % for 40 ms\n\
             12  ü\n"
        );
    }

    #[test]
    fn a_narrow_terminal_cuts_the_widest_columns_first() {
        let text = sample().render(Some(30));
        for line in text.lines() {
            assert!(line.width() <= 30, "{line:?} is wider than 30");
        }
        assert_eq!(
            text.lines().nth(1).unwrap(),
            " 7  render-fram…  incumbent C…"
        );
        // Narrower still: the name gives way too, never below its floor.
        let text = sample().render(Some(20));
        let second = text.lines().nth(1).unwrap();
        assert_eq!(second, " 7  render…  incumb…");
    }

    #[test]
    fn cutting_counts_display_columns() {
        assert_eq!(cut("日本語テキスト", 7), "日本語…");
        assert_eq!(cut("short", 10), "short");
    }
}

//! Markdown tables with aligned columns, as printed by the demonstration.

use std::fmt;

/// A table printed as GitHub Markdown, columns padded to equal width so that it also reads as
/// plain text (at least three characters wide). The first column is left-aligned, the others
/// right-aligned.
///
/// ```
/// let mut table = ddim_digits::Table::new(["S", "value"]);
/// table.row(["10", "0.5"]);
/// assert_eq!(table.to_string(), "| S   | value |\n|:----|------:|\n| 10  |   0.5 |\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty, extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.header[c].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            for (c, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
                let pad = w - cell.chars().count();
                if c == 0 {
                    write!(f, "| {cell}{} ", " ".repeat(pad))?;
                } else {
                    write!(f, "| {}{cell} ", " ".repeat(pad))?;
                }
            }
            writeln!(f, "|")
        };
        line(f, &self.header)?;
        for (c, &w) in widths.iter().enumerate() {
            if c == 0 {
                write!(f, "|:{}", "-".repeat(w + 1))?;
            } else {
                write!(f, "|{}:", "-".repeat(w + 1))?;
            }
        }
        writeln!(f, "|")?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

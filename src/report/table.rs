//! A minimal aligned text table: left-aligned first column, right-aligned numbers.

/// Rows of cells printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends one row (missing cells print empty).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Renders the table, each line indented by `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = " ".repeat(indent);
            for (c, &w) in width.iter().enumerate() {
                let cell = row.get(c).map(String::as_str).unwrap_or("");
                // Padded by hand: `format!`'s width panics past u16::MAX (a tensor name can be
                // longer).
                let pad = " ".repeat(w - cell.chars().count());
                if c == 0 {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str("  ");
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["name", "n"]);
        t.row(["a", "1"]);
        t.row(["long", "100"]);
        assert_eq!(t.render(1), " name    n\n a       1\n long  100\n");
    }

    #[test]
    fn cells_wider_than_formats_width_limit_align() {
        let long = "x".repeat(70_000);
        let mut t = Table::new(["name", "n"]);
        t.row([long.as_str(), "1"]);
        t.row(["a", "22"]);
        let out = t.render(0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1].len(), 70_000 + 2 + 2);
        assert_eq!(lines[2], format!("a{}  22", " ".repeat(69_999)));
    }
}

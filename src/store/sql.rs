//! Statement texts: numbered parameter lists, SQLite's positional form of them, and
//! [`Script`], SQLite statements joined into one round trip.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, AssertSqlSafe};

use super::Backend;

/// SQLite statements run one after another, joined into one text and sent in one round
/// trip to the connection's thread (their parameters bind in order across the
/// statements), so the connection is not left waiting between statements for the task that
/// sends them.
pub(crate) struct Script {
    /// Every statement, joined.
    text: String,
    args: AnyArguments,
    /// Keep the joined text prepared for its next run.
    cached: bool,
}

impl Script {
    pub(crate) fn new() -> Script {
        Script {
            text: String::new(),
            args: AnyArguments::default(),
            cached: true,
        }
    }

    /// Prepares the joined text for this run alone instead of keeping it. For a
    /// text seldom sent again: SQLite keeps a compiled program per text (up to 100 per
    /// connection), and those of large batches' texts took 20 MiB.
    pub(crate) fn uncached(&mut self) {
        self.cached = false;
    }

    /// Appends a statement whose parameters are `$1, $2, ...`, each once and in that order
    /// (they become positional, see [`positional`]); `bind` adds their values.
    pub(crate) fn push(
        &mut self,
        sql: String,
        bind: impl FnOnce(&mut AnyArguments) -> Result<(), sqlx::Error>,
    ) -> Result<(), sqlx::Error> {
        // A `$N` left in a joined text would bind the whole text's Nth value.
        let sql = only_positional(&sql).ok_or_else(|| {
            sqlx::Error::Protocol(format!("not positional, cannot be joined: {sql}"))
        })?;
        self.push_positional(&sql, bind)
    }

    /// Appends a statement already in SQLite's form ([`sqlite_text`]), such as a text made
    /// once and kept: [`Script::push`] would convert it again each time.
    pub(crate) fn push_positional(
        &mut self,
        sql: &str,
        bind: impl FnOnce(&mut AnyArguments) -> Result<(), sqlx::Error>,
    ) -> Result<(), sqlx::Error> {
        if !self.text.is_empty() {
            self.text.push_str(";\n");
        }
        self.text.push_str(sql);
        bind(&mut self.args)
    }

    /// Runs every statement on `conn`; returns the rows they returned, in order.
    pub(crate) async fn run(self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>, sqlx::Error> {
        if self.text.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_with(AssertSqlSafe(self.text), self.args)
            .persistent(self.cached)
            .fetch_all(conn)
            .await
    }
}

/// `$first, ..., $(first + count - 1)`: a list of numbered parameters.
pub(crate) fn params(first: usize, count: usize) -> String {
    let mut list = String::with_capacity(count * 6);
    push_params(&mut list, first, count);
    list
}

/// `($1, $2, ...), ($n, ...)`: `rows` rows of `width` numbered parameters, for a multi-row
/// `VALUES` list. Written into one string: an attempt batch's statements have hundreds.
pub(crate) fn values(rows: usize, width: usize) -> String {
    values_from(1, rows, width)
}

/// [`values`] numbered from `$first`.
pub(crate) fn values_from(first: usize, rows: usize, width: usize) -> String {
    let mut list = String::with_capacity(rows * (width * 6 + 4));
    for row in 0..rows {
        if row > 0 {
            list.push_str(", ");
        }
        list.push('(');
        push_params(&mut list, first + row * width, width);
        list.push(')');
    }
    list
}

fn push_params(list: &mut String, first: usize, count: usize) {
    use std::fmt::Write;
    for i in first..first + count {
        let comma = if i > first { ", " } else { "" };
        write!(list, "{comma}${i}").expect("writing to a String cannot fail");
    }
}

/// `sql` as SQLite binds it fastest. SQLite binds a `$N` parameter by looking its name up in
/// a list as long as the statement's (quadratic in the parameter count: a fifth of the
/// writer's time in the benchmark), and an anonymous `?` by its position. So on SQLite a
/// statement whose parameters are `$1, $2, ..., $n`, each once and in that order, gets `?`s
/// instead; any other statement, and every statement on PostgreSQL, is left as it is.
pub(crate) fn positional(sql: String, backend: Backend) -> String {
    if backend != Backend::Sqlite {
        return sql;
    }
    only_positional(&sql).unwrap_or(sql)
}

/// `sql`, whose parameters are `$1, $2, ..., $n`, each once and in that order, in SQLite's
/// form for [`Script::push_positional`]. Panics if it has other parameters: for texts
/// fixed in the code.
pub(crate) fn sqlite_text(sql: String) -> String {
    only_positional(&sql).unwrap_or_else(|| panic!("not positional: {sql}"))
}

/// `sql` with `$1, $2, ..., $n` (each once, in that order) as `?`s, or `None` if it has
/// other parameters (or a `?` or a comment already).
fn only_positional(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut next, mut copied, mut at) = (1, 0, 0);
    let mut quote = None;
    while at < bytes.len() {
        let byte = bytes[at];
        match (quote, byte) {
            (Some(open), _) if byte == open => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(byte),
            // A `?` or a comment already there: leave the statement alone.
            (None, b'?') => return None,
            (None, b'-' | b'/') if matches!(bytes.get(at + 1), Some(b'-' | b'*')) => return None,
            (None, b'$') => {
                let digits = bytes[at + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .count();
                if sql[at + 1..at + 1 + digits].parse() != Ok(next) {
                    return None;
                }
                out.push_str(&sql[copied..at]);
                out.push('?');
                next += 1;
                at += 1 + digits;
                copied = at;
                continue;
            }
            (None, _) => {}
        }
        at += 1;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{Backend, Script, params, positional, values, values_from};

    fn on_sqlite(sql: &str) -> String {
        positional(sql.to_owned(), Backend::Sqlite)
    }

    #[test]
    fn parameter_lists_are_numbered_in_order() {
        assert_eq!(params(4, 3), "$4, $5, $6");
        assert_eq!(params(1, 0), "");
        assert_eq!(values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values(1, 1), "($1)");
        assert_eq!(values_from(7, 2, 2), "($7, $8), ($9, $10)");
    }

    #[test]
    fn numbered_parameters_in_order_become_positional_on_sqlite() {
        assert_eq!(
            on_sqlite("UPDATE t SET a = $1, b = 'x$9' WHERE id IN ($2, $3) LIMIT 10"),
            "UPDATE t SET a = ?, b = 'x$9' WHERE id IN (?, ?) LIMIT 10"
        );
        assert_eq!(
            on_sqlite("INSERT INTO t VALUES ($1), ($2)"),
            "INSERT INTO t VALUES (?), (?)"
        );
    }

    #[test]
    fn other_statements_are_left_as_they_are() {
        for sql in [
            "SELECT $1 WHERE a = $1",
            "SELECT $2, $1",
            "SELECT $1, $3",
            "SELECT ?, $1",
            "SELECT $1 -- $2",
            "SELECT \"$1\", $2",
            "SELECT $",
        ] {
            assert_eq!(on_sqlite(sql), sql);
        }
        let sql = "UPDATE t SET a = $1 WHERE b = $2";
        assert_eq!(positional(sql.to_owned(), Backend::Postgres), sql);
    }

    #[test]
    fn a_sqlite_script_refuses_a_statement_it_cannot_join() {
        let mut script = Script::new();
        script
            .push("SELECT $1, $2".to_owned(), |_| Ok(()))
            .expect("in order");
        assert!(
            script.push("SELECT $2, $1".to_owned(), |_| Ok(())).is_err(),
            "its $2 would bind the whole text's second value"
        );
    }
}

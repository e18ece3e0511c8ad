//! Cheap T-SQL → SQLite rewrites, so that queries written for SQL Server (as
//! the Sidexis plugin writes them) run unchanged against the SQLite fixture.
//!
//! Already compatible without help: `@P1..@Pn` placeholders (SQLite named
//! parameters), `[bracketed]` identifiers, `SELECT 1`, `IN (...)`. Rewritten
//! here, outside string literals and comments:
//!
//! * `N'...'` literals → `'...'`;
//! * schema/database qualifiers: `dbo.patient`, `[dbo].[patient]`,
//!   `PDATA.dbo.patient`, `PDATA..patient` → `patient` (any chain part
//!   `dbo`, or empty, is dropped with everything before it);
//! * `SELECT [DISTINCT] TOP n` / `TOP (n)` → `SELECT [DISTINCT] ... LIMIT n`
//!   (for the outermost SELECT; the LIMIT is appended at the end);
//! * `ISNULL(` → `IFNULL(`, `LEN(` → `LENGTH(`, `GETDATE()` →
//!   `CURRENT_TIMESTAMP`;
//! * trailing semicolons are dropped.
//!
//! [`is_noop`] recognises session statements (`SET NOCOUNT ON`, ...) that
//! SQLite has no equivalent for and that are answered with a plain DONE.
//!
//! This is a token-level rewrite, not a parser: it is meant for the simple
//! statements a reader of a vendor database sends.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Whitespace or a comment: kept as is.
    Space(String),
    /// A string literal, including its quotes.
    Str(String),
    /// A plain word (keyword, identifier, number, `@P1`).
    Word(String),
    /// A quoted identifier: `[x]` or `"x"`, including its quotes.
    Quoted(String),
    /// Any other single character.
    Punct(char),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Space(s) | Tok::Str(s) | Tok::Word(s) | Tok::Quoted(s) => s.clone(),
            Tok::Punct(c) => c.to_string(),
        }
    }

    fn is_space(&self) -> bool {
        matches!(self, Tok::Space(_))
    }

    fn is_ident(&self) -> bool {
        matches!(self, Tok::Word(_) | Tok::Quoted(_))
    }

    /// The identifier without quotes.
    fn ident(&self) -> Option<&str> {
        match self {
            Tok::Word(w) => Some(w),
            Tok::Quoted(q) => {
                let inner = q.get(1..).unwrap_or("");
                Some(inner.strip_suffix([']', '"']).unwrap_or(inner))
            }
            _ => None,
        }
    }

    fn is_word(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '@' | '#' | '$')
}

fn lex(sql: &str) -> Vec<Tok> {
    let chars: Vec<char> = sql.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut i = 0;
    // Index just past a quoted run opened at `i` and closed by `close`, where
    // a doubled `close` is an escaped one (`'it''s'`, `[a]]b]`).
    let quoted_end = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < n {
            if chars[j] == close {
                if chars.get(j + 1) == Some(&close) {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        n
    };
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let start = i;
        let tok = if c.is_whitespace() {
            while i < n && chars[i].is_whitespace() {
                i += 1;
            }
            Tok::Space(chars[start..i].iter().collect())
        } else if c == '-' && next == Some('-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
            Tok::Space(chars[start..i].iter().collect())
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < n && !(chars[i] == '/' && chars[i - 1] == '*' && i >= start + 3) {
                i += 1;
            }
            i = (i + 1).min(n);
            Tok::Space(chars[start..i].iter().collect())
        } else if c == '\'' {
            i = quoted_end(i, '\'');
            Tok::Str(chars[start..i].iter().collect())
        } else if (c == 'N' || c == 'n') && next == Some('\'') && !prev_is_word(&out) {
            // N'...' → '...'
            i = quoted_end(i + 1, '\'');
            Tok::Str(chars[start + 1..i].iter().collect())
        } else if c == '[' {
            i = quoted_end(i, ']');
            Tok::Quoted(chars[start..i].iter().collect())
        } else if c == '"' {
            i = quoted_end(i, '"');
            Tok::Quoted(chars[start..i].iter().collect())
        } else if is_word_char(c) {
            while i < n && is_word_char(chars[i]) {
                i += 1;
            }
            Tok::Word(chars[start..i].iter().collect())
        } else {
            i += 1;
            Tok::Punct(c)
        };
        out.push(tok);
    }
    out
}

fn prev_is_word(out: &[Tok]) -> bool {
    matches!(out.last(), Some(Tok::Word(_)))
}

/// Rewrites a T-SQL statement for SQLite (see the module docs).
pub fn translate(sql: &str) -> String {
    let mut toks = lex(sql);
    strip_qualifiers(&mut toks);
    rename_functions(&mut toks);
    let limit = take_top(&mut toks);

    // Drop trailing whitespace and semicolons.
    while matches!(toks.last(), Some(t) if t.is_space() || *t == Tok::Punct(';')) {
        toks.pop();
    }
    let mut out: String = toks.iter().map(Tok::text).collect();
    if let Some(n) = limit {
        out.push_str(" LIMIT ");
        out.push_str(&n);
    }
    out
}

/// `a.b.c` chains: drop every part up to and including a `dbo` or empty part.
fn strip_qualifiers(toks: &mut Vec<Tok>) {
    let mut i = 0;
    while i < toks.len() {
        if !toks[i].is_ident() || (i > 0 && toks[i - 1] == Tok::Punct('.')) {
            i += 1;
            continue;
        }
        // Collect the chain starting at i: ident ('.' ident?)*
        let start = i;
        let mut j = i + 1;
        let mut cut = None; // index of the first token to keep
        while j < toks.len() && toks[j] == Tok::Punct('.') {
            let part_before_is_dbo = toks[j - 1].ident().is_some_and(|p| p.eq_ignore_ascii_case("dbo"));
            let empty_part = toks[j - 1] == Tok::Punct('.');
            if part_before_is_dbo || empty_part {
                cut = Some(j + 1);
            }
            if j + 1 < toks.len() && toks[j + 1].is_ident() {
                j += 2;
            } else {
                j += 1;
            }
        }
        match cut {
            Some(c) if c < j => {
                toks.drain(start..c);
                i = start + 1;
            }
            _ => i = j,
        }
    }
}

fn rename_functions(toks: &mut [Tok]) {
    for k in 0..toks.len() {
        let next_paren = toks[k + 1..].iter().find(|t| !t.is_space()).is_some_and(|t| *t == Tok::Punct('('));
        if !next_paren {
            continue;
        }
        if toks[k].is_word("ISNULL") {
            toks[k] = Tok::Word("IFNULL".into());
        } else if toks[k].is_word("LEN") {
            toks[k] = Tok::Word("LENGTH".into());
        } else if toks[k].is_word("GETDATE") {
            // GETDATE() → CURRENT_TIMESTAMP: blank out the parentheses.
            let open = k + 1 + toks[k + 1..].iter().position(|t| !t.is_space()).unwrap_or(0);
            let close = toks[open + 1..].iter().position(|t| !t.is_space()).map(|p| open + 1 + p);
            if let Some(close) = close.filter(|c| toks[*c] == Tok::Punct(')')) {
                toks[k] = Tok::Word("CURRENT_TIMESTAMP".into());
                for t in &mut toks[k + 1..=close] {
                    *t = Tok::Space(String::new());
                }
            }
        }
    }
}

/// Removes `TOP n` / `TOP (n)` after the first SELECT [DISTINCT|ALL] and
/// returns `n`.
fn take_top(toks: &mut Vec<Tok>) -> Option<String> {
    let mut idx = (0..toks.len()).filter(|&k| !toks[k].is_space());
    let first = idx.next()?;
    if !toks[first].is_word("SELECT") {
        return None;
    }
    let mut k = idx.next()?;
    if toks[k].is_word("DISTINCT") || toks[k].is_word("ALL") {
        k = idx.next()?;
    }
    if !toks[k].is_word("TOP") {
        return None;
    }
    let a = idx.next()?;
    let (n, end) = if toks[a] == Tok::Punct('(') {
        let b = idx.next()?;
        let c = idx.next()?;
        if toks[c] != Tok::Punct(')') || !matches!(toks[b], Tok::Word(_)) {
            return None;
        }
        (toks[b].text(), c)
    } else if matches!(toks[a], Tok::Word(_)) {
        (toks[a].text(), a)
    } else {
        return None;
    };
    // TOP n PERCENT / TOP n WITH TIES have no LIMIT equivalent: leave them.
    if idx.next().is_some_and(|k| toks[k].is_word("PERCENT") || toks[k].is_word("WITH")) {
        return None;
    }
    // Also drop the whitespace after `n` so that no double space remains.
    let end = if toks.get(end + 1).is_some_and(Tok::is_space) { end + 1 } else { end };
    toks.drain(k..=end);
    Some(n)
}

/// Session statements SQLite has no use for, answered with a plain DONE.
pub fn is_noop(sql: &str) -> bool {
    let toks = lex(sql);
    let first = toks.iter().find(|t| !t.is_space());
    first.is_some_and(|t| t.is_word("SET"))
}

/// True if the statement has nothing but whitespace, comments and `;`.
pub fn is_empty(sql: &str) -> bool {
    lex(sql).iter().all(|t| t.is_space() || *t == Tok::Punct(';'))
}

#[cfg(test)]
mod tests {
    use super::translate as t;

    #[test]
    fn leaves_sqlite_compatible_sql_alone() {
        for sql in [
            "SELECT 1",
            "SELECT CardId FROM patient WHERE SidexisPatientId = @P1",
            "SELECT [CardId] FROM [patient] WHERE x IN (@P1, @P2, @P3)",
            "SELECT p.CardId, m.imageName FROM patient p JOIN mediabase m ON m.PatientId = p.Id",
            "SELECT 'dbo.patient', 'N''x'",
            "SELECT a -- dbo.x\nFROM t",
        ] {
            assert_eq!(t(sql), sql);
        }
    }

    #[test]
    fn unicode_literals() {
        assert_eq!(t("SELECT N'Müller' AS n"), "SELECT 'Müller' AS n");
        assert_eq!(t("SELECT n'it''s'"), "SELECT 'it''s'");
        assert_eq!(t("SELECT 'a''' + N'b'"), "SELECT 'a''' + 'b'");
        // A column named N followed by a literal is not a prefix.
        assert_eq!(t("SELECT colN'x'"), "SELECT colN'x'");
    }

    #[test]
    fn qualifiers() {
        assert_eq!(t("SELECT * FROM dbo.patient"), "SELECT * FROM patient");
        assert_eq!(t("SELECT * FROM [dbo].[patient]"), "SELECT * FROM [patient]");
        assert_eq!(t("SELECT * FROM PDATA.dbo.patient"), "SELECT * FROM patient");
        assert_eq!(t("SELECT * FROM [PDATA]..[patient]"), "SELECT * FROM [patient]");
        assert_eq!(
            t("SELECT dbo.patient.CardId FROM dbo.patient WHERE p.x = 1"),
            "SELECT patient.CardId FROM patient WHERE p.x = 1"
        );
    }

    #[test]
    fn top_becomes_limit() {
        assert_eq!(t("SELECT TOP 10 a FROM t ORDER BY a;"), "SELECT a FROM t ORDER BY a LIMIT 10");
        assert_eq!(t("select distinct top (5) a from t"), "select distinct a from t LIMIT 5");
        assert_eq!(t("SELECT TOP (@P1) a FROM t"), "SELECT a FROM t LIMIT @P1");
        assert_eq!(t("SELECT TOP 5 PERCENT a FROM t"), "SELECT TOP 5 PERCENT a FROM t");
    }

    #[test]
    fn functions() {
        assert_eq!(t("SELECT ISNULL(a, '') FROM t"), "SELECT IFNULL(a, '') FROM t");
        assert_eq!(t("SELECT LEN (a) FROM t"), "SELECT LENGTH (a) FROM t");
        assert_eq!(t("SELECT GETDATE()"), "SELECT CURRENT_TIMESTAMP");
        assert_eq!(t("SELECT len FROM t"), "SELECT len FROM t");
    }

    #[test]
    fn noop_and_empty() {
        assert!(super::is_noop("  SET NOCOUNT ON;"));
        assert!(!super::is_noop("SELECT 1"));
        assert!(super::is_empty(" ; -- nothing\n"));
        assert!(!super::is_empty("SELECT 1"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for sql in
            ["'", "[", "\"", "/*", "--", "N'", "SELECT TOP", "SELECT TOP (", "a..", ".", "dbo.", "GETDATE(", "ß'"]
        {
            let _ = t(sql);
            let _ = super::is_noop(sql);
        }
    }
}

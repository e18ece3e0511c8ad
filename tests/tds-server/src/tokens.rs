//! Encoders for the server's token stream (MS-TDS §2.2.7): LOGINACK,
//! ENVCHANGE, INFO, ERROR, COLMETADATA, ROW, DONE/DONEPROC/DONEINPROC and
//! RETURNSTATUS.
//!
//! A reply is built in a [`Tokens`] buffer and then framed into packets by
//! [`crate::packet`]. Result columns use only four SQL Server types, enough
//! to carry any SQLite value (see [`WireType`]).

use rusqlite::types::Value;

/// The SQL Server type a result column is announced as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// `bigint` as INTN(8): tiberius `ColumnData::I64`.
    BigInt,
    /// `float` as FLTN(8): `ColumnData::F64`.
    Float,
    /// `nvarchar(4000)`: `ColumnData::String`.
    NVarChar,
    /// `nvarchar(max)` (PLP), for values longer than 4000 UTF-16 units.
    NVarCharMax,
    /// `varbinary(8000)`: `ColumnData::Binary`.
    VarBinary,
    /// `varbinary(max)` (PLP), for values longer than 8000 bytes.
    VarBinaryMax,
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: WireType,
}

/// SQL_Latin1_General_CP1_CI_AS (LCID 0x0409, flags 0xD0, sort id 52), the
/// collation of a default SQL Server install.
pub const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// TDS 7.4 as LOGINACK carries it (big-endian on the wire).
pub const TDS_7_4: u32 = 0x7400_0004;

mod token {
    pub const RETURNSTATUS: u8 = 0x79;
    pub const COLMETADATA: u8 = 0x81;
    pub const ERROR: u8 = 0xAA;
    pub const INFO: u8 = 0xAB;
    pub const LOGINACK: u8 = 0xAD;
    pub const ROW: u8 = 0xD1;
    pub const ENVCHANGE: u8 = 0xE3;
    pub const DONE: u8 = 0xFD;
    pub const DONEPROC: u8 = 0xFE;
    pub const DONEINPROC: u8 = 0xFF;
}

/// DONE status bits.
pub mod done {
    pub const FINAL: u16 = 0x00;
    pub const MORE: u16 = 0x01;
    pub const ERROR: u16 = 0x02;
    pub const COUNT: u16 = 0x10;
    pub const ATTENTION: u16 = 0x20;
}

/// DONE CurCmd values (only informative).
pub mod cmd {
    pub const SELECT: u16 = 0xC1;
    pub const INSERT: u16 = 0xC3;
    pub const EXECUTE: u16 = 0xE0;
}

/// Which DONE token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneKind {
    /// End of a SQL batch statement.
    Done,
    /// End of a statement inside a procedure (sp_executesql).
    InProc,
    /// End of the procedure.
    Proc,
}

/// A token stream being built.
#[derive(Debug, Default)]
pub struct Tokens {
    buf: Vec<u8>,
}

impl Tokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn utf16(&mut self, units: &[u16]) {
        for u in units {
            self.u16(*u);
        }
    }

    /// B_VARCHAR (at most 255 UTF-16 units; longer text is cut).
    fn b_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().take(255).collect();
        self.u8(units.len() as u8);
        self.utf16(&units);
    }

    /// US_VARCHAR (at most 65535 UTF-16 units).
    fn us_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().take(u16::MAX as usize).collect();
        self.u16(units.len() as u16);
        self.utf16(&units);
    }

    /// Writes a token whose body is prefixed by a u16 length.
    fn with_len16(&mut self, token: u8, body: impl FnOnce(&mut Tokens)) {
        self.u8(token);
        let at = self.buf.len();
        self.u16(0);
        body(self);
        let len = (self.buf.len() - at - 2).min(u16::MAX as usize) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_le_bytes());
    }

    /// LOGINACK: interface T-SQL, TDS 7.4, "Microsoft SQL Server" 16.0.2000.
    pub fn login_ack(&mut self) {
        self.with_len16(token::LOGINACK, |t| {
            t.u8(1);
            t.buf.extend_from_slice(&TDS_7_4.to_be_bytes());
            t.b_varchar("Microsoft SQL Server");
            t.buf.extend_from_slice(&[16, 0, 0x07, 0xD0]);
        });
    }

    /// ENVCHANGE with B_VARCHAR new/old values (database = 1, language = 2,
    /// packet size = 4).
    pub fn env_change(&mut self, kind: u8, new: &str, old: &str) {
        self.with_len16(token::ENVCHANGE, |t| {
            t.u8(kind);
            t.b_varchar(new);
            t.b_varchar(old);
        });
    }

    /// ENVCHANGE SQL collation (type 7).
    pub fn env_collation(&mut self) {
        self.with_len16(token::ENVCHANGE, |t| {
            t.u8(7);
            t.u8(COLLATION.len() as u8);
            t.buf.extend_from_slice(&COLLATION);
            t.u8(0);
        });
    }

    fn message(&mut self, token: u8, number: u32, state: u8, class: u8, text: &str) {
        self.with_len16(token, |t| {
            t.u32(number);
            t.u8(state);
            t.u8(class);
            t.us_varchar(text);
            t.b_varchar("ferry-tds-server");
            t.b_varchar("");
            t.u32(1);
        });
    }

    /// INFO (informational message, class ≤ 10).
    pub fn info(&mut self, number: u32, text: &str) {
        self.message(token::INFO, number, 1, 0, text);
    }

    /// ERROR.
    pub fn error(&mut self, number: u32, class: u8, text: &str) {
        self.message(token::ERROR, number, 1, class, text);
    }

    pub fn done(&mut self, kind: DoneKind, status: u16, cur_cmd: u16, rows: u64) {
        self.u8(match kind {
            DoneKind::Done => token::DONE,
            DoneKind::InProc => token::DONEINPROC,
            DoneKind::Proc => token::DONEPROC,
        });
        self.u16(status);
        self.u16(cur_cmd);
        self.u64(rows);
    }

    pub fn return_status(&mut self, status: i32) {
        self.u8(token::RETURNSTATUS);
        self.buf.extend_from_slice(&status.to_le_bytes());
    }

    pub fn col_metadata(&mut self, columns: &[Column]) {
        self.u8(token::COLMETADATA);
        self.u16(columns.len().min(u16::MAX as usize - 1) as u16);
        for c in columns.iter().take(u16::MAX as usize - 1) {
            self.u32(0); // UserType
            self.u16(0x0001); // Flags: nullable
            match c.ty {
                WireType::BigInt => {
                    self.u8(0x26);
                    self.u8(8);
                }
                WireType::Float => {
                    self.u8(0x6D);
                    self.u8(8);
                }
                WireType::NVarChar | WireType::NVarCharMax => {
                    self.u8(0xE7);
                    self.u16(if c.ty == WireType::NVarChar { 8000 } else { 0xFFFF });
                    self.buf.extend_from_slice(&COLLATION);
                }
                WireType::VarBinary | WireType::VarBinaryMax => {
                    self.u8(0xA5);
                    self.u16(if c.ty == WireType::VarBinary { 8000 } else { 0xFFFF });
                }
            }
            self.b_varchar(&c.name);
        }
    }

    /// A ROW. Each value must already have its column's type (as produced
    /// by [`crate::sqlite`]); anything else is sent as NULL.
    pub fn row(&mut self, columns: &[Column], values: &[Value]) {
        self.u8(token::ROW);
        for (i, c) in columns.iter().enumerate() {
            let v = values.get(i).unwrap_or(&Value::Null);
            match (c.ty, v) {
                (WireType::BigInt, Value::Integer(n)) => {
                    self.u8(8);
                    self.buf.extend_from_slice(&n.to_le_bytes());
                }
                (WireType::Float, Value::Real(f)) => {
                    self.u8(8);
                    self.buf.extend_from_slice(&f.to_le_bytes());
                }
                (WireType::BigInt | WireType::Float, _) => self.u8(0),
                (WireType::NVarChar, Value::Text(s)) => {
                    let units: Vec<u16> = s.encode_utf16().collect();
                    if units.len() > 4000 {
                        self.u16(0xFFFF);
                    } else {
                        self.u16((units.len() * 2) as u16);
                        self.utf16(&units);
                    }
                }
                (WireType::VarBinary, Value::Blob(b)) if b.len() <= 8000 => {
                    self.u16(b.len() as u16);
                    self.buf.extend_from_slice(b);
                }
                (WireType::NVarChar | WireType::VarBinary, _) => self.u16(0xFFFF),
                (WireType::NVarCharMax, Value::Text(s)) => {
                    let bytes: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
                    self.plp(&bytes);
                }
                (WireType::VarBinaryMax, Value::Blob(b)) => self.plp(b),
                (WireType::NVarCharMax | WireType::VarBinaryMax, _) => self.u64(u64::MAX),
            }
        }
    }

    /// PLP body: known total length, chunks of at most 8000 bytes, terminator.
    fn plp(&mut self, data: &[u8]) {
        self.u64(data.len() as u64);
        for chunk in data.chunks(8000) {
            self.u32(chunk.len() as u32);
            self.buf.extend_from_slice(chunk);
        }
        self.u32(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_is_13_bytes() {
        let mut t = Tokens::new();
        t.done(DoneKind::Done, done::COUNT, cmd::SELECT, 3);
        assert_eq!(t.as_bytes(), &[0xFD, 0x10, 0x00, 0xC1, 0x00, 3, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn login_ack_layout() {
        let mut t = Tokens::new();
        t.login_ack();
        let b = t.as_bytes();
        assert_eq!(b[0], 0xAD);
        let len = u16::from_le_bytes([b[1], b[2]]) as usize;
        assert_eq!(len, b.len() - 3);
        assert_eq!(&b[3..8], &[1, 0x74, 0x00, 0x00, 0x04]);
    }

    #[test]
    fn error_layout() {
        let mut t = Tokens::new();
        t.error(18456, 14, "x");
        let b = t.as_bytes();
        assert_eq!(b[0], 0xAA);
        assert_eq!(u32::from_le_bytes(b[3..7].try_into().unwrap()), 18456);
        assert_eq!(b[8], 14);
        assert_eq!(u16::from_le_bytes([b[1], b[2]]) as usize, b.len() - 3);
    }

    #[test]
    fn plp_nulls_and_chunks() {
        let cols = [
            Column { name: "a".into(), ty: WireType::NVarCharMax },
            Column { name: "b".into(), ty: WireType::BigInt },
            Column { name: "c".into(), ty: WireType::NVarChar },
        ];
        let mut t = Tokens::new();
        t.row(&cols, &[Value::Null, Value::Null, Value::Null]);
        let mut expected = vec![0xD1];
        expected.extend_from_slice(&[0xFF; 8]);
        expected.push(0);
        expected.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(t.as_bytes(), &expected[..]);

        let mut t = Tokens::new();
        t.row(&cols[..1], &[Value::Text("x".repeat(9000))]);
        // 1 + 8 + (4 + 8000) * 2 + (4 + 2000) + 4
        assert_eq!(t.as_bytes().len(), 1 + 8 + 2 * 8004 + 2004 + 4);
    }
}

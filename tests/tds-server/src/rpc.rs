//! Decoders for what a client sends after login: SQL batches (MS-TDS
//! §2.2.6.7) and RPC requests (§2.2.6.6), including the TYPE_INFO and value
//! encodings (§2.2.5) tiberius uses for `@P1..` parameters.
//!
//! Everything here reads through [`Reader`], which bounds-checks every read:
//! a malformed request yields a [`DecodeError`] (answered with an ERROR
//! token), never a panic.

use std::fmt;

use rusqlite::types::Value;

/// A request the server could not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl DecodeError {
    pub fn new(msg: impl Into<String>) -> Self {
        DecodeError(msg.into())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

/// A bounds-checked cursor over a message payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(DecodeError::new(format!(
                "request truncated: wanted {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16_le(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u16_be(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32_le(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64_le(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// `n` UTF-16LE code units.
    pub fn utf16(&mut self, units: usize) -> Result<String> {
        let n = units.checked_mul(2).ok_or_else(|| DecodeError::new("string length overflow"))?;
        utf16_to_string(self.bytes(n)?)
    }

    /// B_VARCHAR: a one-byte length in characters, then UTF-16LE.
    pub fn b_varchar(&mut self) -> Result<String> {
        let n = self.u8()? as usize;
        self.utf16(n)
    }
}

/// Decodes UTF-16LE bytes (even length required, unpaired surrogates refused).
pub fn utf16_to_string(bytes: &[u8]) -> Result<String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(DecodeError::new("UTF-16 text with an odd number of bytes"));
    }
    let units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<std::result::Result<String, _>>()
        .map_err(|_| DecodeError::new("invalid UTF-16 text"))
}

/// Skips ALL_HEADERS (§2.2.5.3), present on every batch and RPC since TDS 7.2.
fn skip_all_headers(r: &mut Reader<'_>) -> Result<()> {
    let total = r.u32_le()? as usize;
    if total < 4 {
        return Err(DecodeError::new("ALL_HEADERS shorter than its length field"));
    }
    r.bytes(total - 4)?;
    Ok(())
}

/// The text of a SQL batch.
pub fn decode_batch(payload: &[u8]) -> Result<String> {
    let mut r = Reader::new(payload);
    skip_all_headers(&mut r)?;
    let rest = r.bytes(r.remaining())?;
    utf16_to_string(rest)
}

/// Which procedure an RPC calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Procedure {
    /// A well-known procedure by id (10 = sp_executesql).
    Id(u16),
    /// By name.
    Name(String),
}

impl Procedure {
    pub const SP_EXECUTESQL: u16 = 10;

    pub fn is_sp_executesql(&self) -> bool {
        match self {
            Procedure::Id(id) => *id == Self::SP_EXECUTESQL,
            Procedure::Name(n) => {
                let n = n.trim_start_matches("sys.").trim_start_matches("[sys].");
                n.eq_ignore_ascii_case("sp_executesql") || n.eq_ignore_ascii_case("[sp_executesql]")
            }
        }
    }
}

impl fmt::Display for Procedure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Procedure::Id(id) => write!(f, "procedure id {id}"),
            Procedure::Name(n) => write!(f, "procedure '{n}'"),
        }
    }
}

/// One RPC parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// As sent (`@P1`, or empty for positional parameters).
    pub name: String,
    pub value: Value,
}

/// A decoded RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcCall {
    pub procedure: Procedure,
    pub params: Vec<Param>,
}

/// Decodes an RPC request (a single call; batched RPCs are refused).
pub fn decode_rpc(payload: &[u8]) -> Result<RpcCall> {
    let mut r = Reader::new(payload);
    skip_all_headers(&mut r)?;
    let name_len = r.u16_le()?;
    let procedure =
        if name_len == 0xFFFF { Procedure::Id(r.u16_le()?) } else { Procedure::Name(r.utf16(name_len as usize)?) };
    let _option_flags = r.u16_le()?;
    let mut params = Vec::new();
    while !r.is_empty() {
        let first = r.bytes(1)?[0];
        if first == 0x80 || first == 0xFF {
            return Err(DecodeError::new("more than one RPC in a request is not supported by this test server"));
        }
        r.pos -= 1;
        let name = r.b_varchar()?;
        let _status = r.u8()?;
        let value = decode_value(&mut r)?;
        params.push(Param { name, value });
    }
    Ok(RpcCall { procedure, params })
}

// TYPE_INFO type bytes (§2.2.5.4).
mod ty {
    pub const NULL: u8 = 0x1F;
    pub const INT1: u8 = 0x30;
    pub const BIT: u8 = 0x32;
    pub const INT2: u8 = 0x34;
    pub const INT4: u8 = 0x38;
    pub const FLT4: u8 = 0x3B;
    pub const FLT8: u8 = 0x3E;
    pub const INT8: u8 = 0x7F;
    pub const GUID: u8 = 0x24;
    pub const INTN: u8 = 0x26;
    pub const BITN: u8 = 0x68;
    pub const DECIMALN: u8 = 0x6A;
    pub const NUMERICN: u8 = 0x6C;
    pub const FLTN: u8 = 0x6D;
    pub const BIGVARBIN: u8 = 0xA5;
    pub const BIGVARCHR: u8 = 0xA7;
    pub const BIGBINARY: u8 = 0xAD;
    pub const BIGCHAR: u8 = 0xAF;
    pub const NVARCHAR: u8 = 0xE7;
    pub const NCHAR: u8 = 0xEF;
}

/// Decodes TYPE_INFO followed by a value of that type, as a SQLite value.
pub fn decode_value(r: &mut Reader<'_>) -> Result<Value> {
    let t = r.u8()?;
    Ok(match t {
        ty::NULL => Value::Null,
        ty::INT1 => Value::Integer(r.u8()? as i64),
        ty::BIT => Value::Integer((r.u8()? != 0) as i64),
        ty::INT2 => Value::Integer(i16::from_le_bytes(r.array()?) as i64),
        ty::INT4 => Value::Integer(i32::from_le_bytes(r.array()?) as i64),
        ty::INT8 => Value::Integer(i64::from_le_bytes(r.array()?)),
        ty::FLT4 => Value::Real(f32::from_le_bytes(r.array()?) as f64),
        ty::FLT8 => Value::Real(f64::from_le_bytes(r.array()?)),
        ty::INTN | ty::BITN | ty::FLTN | ty::GUID => {
            let _max = r.u8()?;
            let len = r.u8()? as usize;
            let data = r.bytes(len)?;
            match (t, len) {
                (_, 0) => Value::Null,
                (ty::INTN, 1) => Value::Integer(data[0] as i64),
                (ty::INTN, 2) => Value::Integer(i16::from_le_bytes([data[0], data[1]]) as i64),
                (ty::INTN, 4) => Value::Integer(i32::from_le_bytes(data.try_into().unwrap()) as i64),
                (ty::INTN, 8) => Value::Integer(i64::from_le_bytes(data.try_into().unwrap())),
                (ty::BITN, 1) => Value::Integer((data[0] != 0) as i64),
                (ty::FLTN, 4) => Value::Real(f32::from_le_bytes(data.try_into().unwrap()) as f64),
                (ty::FLTN, 8) => Value::Real(f64::from_le_bytes(data.try_into().unwrap())),
                (ty::GUID, 16) => Value::Text(guid_text(data)),
                _ => return Err(DecodeError::new(format!("parameter of type {t:#04x} with invalid length {len}"))),
            }
        }
        ty::DECIMALN | ty::NUMERICN => {
            let _max = r.u8()?;
            let _precision = r.u8()?;
            let scale = r.u8()?;
            let len = r.u8()? as usize;
            if len == 0 {
                return Ok(Value::Null);
            }
            let data = r.bytes(len)?;
            numeric_value(data, scale)?
        }
        ty::NVARCHAR | ty::NCHAR | ty::BIGVARCHR | ty::BIGCHAR | ty::BIGVARBIN | ty::BIGBINARY => {
            let max = r.u16_le()?;
            let text = matches!(t, ty::NVARCHAR | ty::NCHAR | ty::BIGVARCHR | ty::BIGCHAR);
            if text {
                let _collation = r.bytes(5)?;
            }
            let data = if max == 0xFFFF {
                read_plp(r)?
            } else {
                match r.u16_le()? {
                    0xFFFF => None,
                    n => Some(r.bytes(n as usize)?.to_vec()),
                }
            };
            match data {
                None => Value::Null,
                Some(d) => match t {
                    ty::NVARCHAR | ty::NCHAR => Value::Text(utf16_to_string(&d)?),
                    // Single-byte text: treat as Latin-1 (the default collation's
                    // code page 1252 agrees on letters such as ä, ö, ü, ß).
                    ty::BIGVARCHR | ty::BIGCHAR => Value::Text(d.iter().map(|b| *b as char).collect()),
                    _ => Value::Blob(d),
                },
            }
        }
        other => {
            return Err(DecodeError::new(format!("parameter type {other:#04x} is not supported by this test server")))
        }
    })
}

/// PLP (partially length-prefixed) data, §2.2.5.2.3: a u64 total length
/// (all ones = NULL, ...FE = unknown), then u32-length chunks until a zero.
fn read_plp(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>> {
    let total = r.u64_le()?;
    if total == u64::MAX {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let n = r.u32_le()? as usize;
        if n == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(r.bytes(n)?);
    }
}

fn guid_text(d: &[u8]) -> String {
    // The first three groups are little-endian on the wire.
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]
    )
}

fn numeric_value(data: &[u8], scale: u8) -> Result<Value> {
    let (sign, mag) = data.split_first().ok_or_else(|| DecodeError::new("empty numeric value"))?;
    if mag.len() > 16 || scale > 38 {
        return Err(DecodeError::new("numeric value out of range"));
    }
    let mut bytes = [0u8; 16];
    bytes[..mag.len()].copy_from_slice(mag);
    let m = u128::from_le_bytes(bytes);
    let negative = *sign == 0;
    if scale == 0 {
        if let Ok(v) = i64::try_from(m) {
            return Ok(Value::Integer(if negative { -v } else { v }));
        }
    }
    let v = m as f64 / 10f64.powi(scale as i32);
    Ok(Value::Real(if negative { -v } else { v }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_headers() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&22u32.to_le_bytes());
        v.extend_from_slice(&18u32.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&1u32.to_le_bytes());
        v
    }

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }

    #[test]
    fn batch_text() {
        let mut p = all_headers();
        p.extend(utf16("SELECT 'Müller'"));
        assert_eq!(decode_batch(&p).unwrap(), "SELECT 'Müller'");
        p.push(0);
        assert!(decode_batch(&p).is_err());
        assert!(decode_batch(&[1, 0, 0, 0]).is_err());
        assert!(decode_batch(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn rpc_with_typical_tiberius_params() {
        let mut p = all_headers();
        p.extend_from_slice(&[0xFF, 0xFF, 10, 0, 0, 0]);
        // @P1 int = 42
        p.push(3);
        p.extend(utf16("@P1"));
        p.extend_from_slice(&[0, ty::INTN, 4, 4, 42, 0, 0, 0]);
        // @P2 nvarchar(4000) = 'ß'
        p.push(3);
        p.extend(utf16("@P2"));
        p.extend_from_slice(&[0, ty::NVARCHAR, 0x40, 0x1F, 0, 0, 0, 0, 0, 2, 0]);
        p.extend(utf16("ß"));
        // @P3 nvarchar(max) = 'ab' as PLP
        p.push(3);
        p.extend(utf16("@P3"));
        p.extend_from_slice(&[0, ty::NVARCHAR, 0xFF, 0xFF, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&u64::MAX.wrapping_sub(1).to_le_bytes());
        p.extend_from_slice(&4u32.to_le_bytes());
        p.extend(utf16("ab"));
        p.extend_from_slice(&0u32.to_le_bytes());
        // @P4 NULL (tiberius' encoding of a typeless None)
        p.push(3);
        p.extend(utf16("@P4"));
        p.extend_from_slice(&[0, ty::NULL]);
        // @P5 float = 1.5
        p.push(3);
        p.extend(utf16("@P5"));
        p.extend_from_slice(&[0, ty::FLTN, 8, 8]);
        p.extend_from_slice(&1.5f64.to_le_bytes());
        // @P6 varbinary = [1,2]
        p.push(3);
        p.extend(utf16("@P6"));
        p.extend_from_slice(&[0, ty::BIGVARBIN, 0x40, 0x1F, 2, 0, 1, 2]);
        // @P7 bit = NULL
        p.push(3);
        p.extend(utf16("@P7"));
        p.extend_from_slice(&[0, ty::BITN, 1, 0]);

        let call = decode_rpc(&p).unwrap();
        assert!(call.procedure.is_sp_executesql());
        let values: Vec<_> = call.params.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Integer(42),
                Value::Text("ß".into()),
                Value::Text("ab".into()),
                Value::Null,
                Value::Real(1.5),
                Value::Blob(vec![1, 2]),
                Value::Null,
            ]
        );
        assert_eq!(call.params[0].name, "@P1");

        // Every truncation is an error, never a panic.
        for n in 0..p.len() {
            let _ = decode_rpc(&p[..n]);
        }
    }

    /// Random bytes after a valid header: decoding may fail but never panic.
    #[test]
    fn random_requests_never_panic() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut p = all_headers();
            p.extend_from_slice(&[0xFF, 0xFF, 10, 0, 0, 0]);
            // Bias towards plausible type bytes so the value decoders run.
            for i in 0..len {
                let r = next();
                p.push(if i % 7 == 4 {
                    [0x26, 0xE7, 0xA5, 0x6D, 0x68, 0x1F, 0x6A, 0x24][(r % 8) as usize]
                } else {
                    r as u8
                });
            }
            let _ = decode_rpc(&p);
            let _ = decode_batch(&p);
            let _ = crate::login::parse(&p);
            let _ = crate::prelogin::parse(&p[22..]);
            let _ = crate::translate::translate(&String::from_utf8_lossy(&p[22..]));
        }
    }

    #[test]
    fn numerics_and_guids() {
        assert_eq!(numeric_value(&[1, 0x39, 0x30], 2).unwrap(), Value::Real(123.45));
        assert_eq!(numeric_value(&[0, 7], 0).unwrap(), Value::Integer(-7));
        let g = [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF];
        assert_eq!(guid_text(&g), "00112233-4455-6677-8899-AABBCCDDEEFF");
    }
}

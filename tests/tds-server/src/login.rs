//! LOGIN7 (MS-TDS §2.2.6.4): the client's credentials and session wishes.
//!
//! The fixed part carries the TDS version, the requested packet size and
//! option flags; then a table of (offset, length-in-characters) pairs points
//! to UTF-16LE strings: host name, user, password, application, server,
//! (extension), client library, language, database, and SSPI data. The
//! password is obfuscated by swapping each byte's nibbles and XOR-ing with
//! 0xA5; [`decode_password`] undoes that so the server can check it — tests
//! of a wrong password must see SQL Server's real "Login failed" error.

use crate::rpc::{utf16_to_string, DecodeError, Reader};

/// The parts of a LOGIN7 record this server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login7 {
    /// TDS version the client asked for (e.g. 0x74000004 for 7.4).
    pub tds_version: u32,
    /// Requested packet size (0 = server's choice).
    pub packet_size: u32,
    /// The client wants integrated (Windows) authentication.
    pub integrated_security: bool,
    pub hostname: String,
    pub user: String,
    pub password: String,
    pub app_name: String,
    pub server_name: String,
    pub database: String,
}

/// OptionFlags2 fIntSecurity.
const INTEGRATED_SECURITY: u8 = 0x80;
/// Length of the fixed part (up to and including cbSSPILong).
const FIXED_LEN: usize = 94;

/// Parses a LOGIN7 payload, bounds-checking every offset.
pub fn parse(payload: &[u8]) -> Result<Login7, DecodeError> {
    if payload.len() < FIXED_LEN - 4 {
        return Err(DecodeError::new("LOGIN7 shorter than its fixed part"));
    }
    let mut r = Reader::new(payload);
    let _length = r.u32_le()?;
    let tds_version = r.u32_le()?;
    let packet_size = r.u32_le()?;
    let _client_prog_ver = r.u32_le()?;
    let _client_pid = r.u32_le()?;
    let _connection_id = r.u32_le()?;
    let _flags1 = r.u8()?;
    let flags2 = r.u8()?;
    let _type_flags = r.u8()?;
    let _flags3 = r.u8()?;
    let _timezone = r.u32_le()?;
    let _lcid = r.u32_le()?;
    debug_assert_eq!(r.position(), 36);

    // (offset, length in characters) pairs, in wire order.
    let field = |r: &mut Reader<'_>| -> Result<(usize, usize), DecodeError> {
        Ok((r.u16_le()? as usize, r.u16_le()? as usize))
    };
    let hostname = field(&mut r)?;
    let user = field(&mut r)?;
    let password = field(&mut r)?;
    let app_name = field(&mut r)?;
    let server_name = field(&mut r)?;
    let _extension = field(&mut r)?;
    let _library = field(&mut r)?;
    let _language = field(&mut r)?;
    let database = field(&mut r)?;

    let text = |(offset, chars): (usize, usize)| -> Result<String, DecodeError> {
        let bytes = payload
            .get(offset..offset + chars * 2)
            .ok_or_else(|| DecodeError::new("LOGIN7 field points outside the record"))?;
        utf16_to_string(bytes)
    };
    let password_bytes = payload
        .get(password.0..password.0 + password.1 * 2)
        .ok_or_else(|| DecodeError::new("LOGIN7 password points outside the record"))?;

    Ok(Login7 {
        tds_version,
        packet_size,
        integrated_security: flags2 & INTEGRATED_SECURITY != 0,
        hostname: text(hostname)?,
        user: text(user)?,
        password: decode_password(password_bytes)?,
        app_name: text(app_name)?,
        server_name: text(server_name)?,
        database: text(database)?,
    })
}

/// Undoes the LOGIN7 password obfuscation: XOR each byte with 0xA5, then swap
/// its nibbles; the result is UTF-16LE.
pub fn decode_password(obfuscated: &[u8]) -> Result<String, DecodeError> {
    let plain: Vec<u8> = obfuscated.iter().map(|b| (b ^ 0xA5).rotate_left(4)).collect();
    utf16_to_string(&plain)
}

/// The inverse of [`decode_password`] (for tests and hand-made clients).
pub fn encode_password(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(|u| u.to_le_bytes()).map(|b| b.rotate_left(4) ^ 0xA5).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        for pw in ["", "ferry-test-pw", "pässwörd€𝄞"] {
            assert_eq!(decode_password(&encode_password(pw)).unwrap(), pw);
        }
        // A known value: 'a' = 0x61 0x00 -> swap 0x16 0x00 -> xor 0xB3 0xA5.
        assert_eq!(encode_password("a"), vec![0xB3, 0xA5]);
    }

    #[test]
    fn short_or_out_of_range_records_are_errors() {
        assert!(parse(&[0; 10]).is_err());
        let mut rec = vec![0u8; FIXED_LEN];
        // user at offset 90, 100 characters: outside.
        rec[40..42].copy_from_slice(&90u16.to_le_bytes());
        rec[42..44].copy_from_slice(&100u16.to_le_bytes());
        assert!(parse(&rec).is_err());
        rec[42..44].copy_from_slice(&0u16.to_le_bytes());
        let login = parse(&rec).unwrap();
        assert_eq!(login.user, "");
    }
}

//! PRELOGIN (MS-TDS §2.2.6.5): the first exchange of every connection.
//!
//! The client announces its version and encryption wish; the server answers
//! with its own. This server never speaks TLS, so it always answers
//! `ENCRYPT_NOT_SUP` (0x02). That is the one answer a TLS-capable tiberius
//! accepts without starting a TLS handshake, and only if the client itself
//! asked for `EncryptionLevel::NotSupported`; a client that requires
//! encryption gets a clean "Server does not allow the requested encryption
//! level" error from tiberius instead of a hang.

use crate::rpc::{DecodeError, Reader};

/// Option tokens.
const VERSION: u8 = 0x00;
const ENCRYPTION: u8 = 0x01;
const INSTOPT: u8 = 0x02;
const THREADID: u8 = 0x03;
const MARS: u8 = 0x04;
const TERMINATOR: u8 = 0xFF;

/// `ENCRYPT_NOT_SUP`.
pub const ENCRYPT_NOT_SUP: u8 = 0x02;

/// What we care about in the client's PRELOGIN.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientPrelogin {
    /// The client's ENCRYPTION byte, if it sent one.
    pub encryption: Option<u8>,
    /// The client asked for MARS (not supported; we answer "off").
    pub mars: bool,
}

/// Parses the option table of a client PRELOGIN, checking every offset.
pub fn parse(payload: &[u8]) -> Result<ClientPrelogin, DecodeError> {
    let mut table = Reader::new(payload);
    let mut out = ClientPrelogin::default();
    loop {
        let token = table.u8()?;
        if token == TERMINATOR {
            return Ok(out);
        }
        let offset = table.u16_be()? as usize;
        let len = table.u16_be()? as usize;
        let data = payload
            .get(offset..offset + len)
            .ok_or_else(|| DecodeError::new("PRELOGIN option points outside the message"))?;
        match token {
            ENCRYPTION => out.encryption = data.first().copied(),
            MARS => out.mars = data.first().is_some_and(|b| *b != 0),
            _ => {}
        }
    }
}

/// The server's PRELOGIN answer: version 16.0.2000, no encryption, instance
/// OK, no thread id, no MARS.
pub fn response() -> Vec<u8> {
    let options: [(u8, &[u8]); 5] = [
        (VERSION, &[16, 0, 0x07, 0xD0, 0, 0]),
        (ENCRYPTION, &[ENCRYPT_NOT_SUP]),
        (INSTOPT, &[0]),
        (THREADID, &[]),
        (MARS, &[0]),
    ];
    let mut offset = options.len() * 5 + 1;
    let mut out = Vec::new();
    for (token, data) in options {
        out.push(token);
        out.extend_from_slice(&(offset as u16).to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        offset += data.len();
    }
    out.push(TERMINATOR);
    for (_, data) in options {
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_parses_and_says_not_supported() {
        let r = response();
        assert_eq!(parse(&r).unwrap(), ClientPrelogin { encryption: Some(ENCRYPT_NOT_SUP), mars: false });
    }

    #[test]
    fn rejects_offsets_outside_the_message() {
        assert!(parse(&[ENCRYPTION, 0, 200, 0, 1, TERMINATOR]).is_err());
        assert!(parse(&[ENCRYPTION, 0, 5]).is_err());
        assert!(parse(&[]).is_err());
    }
}

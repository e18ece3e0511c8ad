//! TDS packet framing (MS-TDS §2.2.3).
//!
//! Every TDS message travels as one or more packets: an 8-byte header (type,
//! status, big-endian total length, SPID, packet id, window) and a payload.
//! The last packet of a message carries the END_OF_MESSAGE status bit. This
//! module reassembles client messages from packets and splits server replies
//! into packets of the negotiated size (4096 bytes by default, which is what
//! tiberius asks for), so the rest of the server deals in whole messages.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of a packet header.
pub const HEADER_LEN: usize = 8;

/// The packet size used until LOGIN7 negotiates one (and the usual one).
pub const DEFAULT_PACKET_SIZE: usize = 4096;

/// A client may not make us buffer more than this for one message; anything
/// larger is treated as a broken client and the connection is closed.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Packet types (MS-TDS §2.2.3.1.1) this server knows.
pub mod kind {
    /// SQL batch: ALL_HEADERS + UTF-16LE text.
    pub const SQL_BATCH: u8 = 0x01;
    /// Remote procedure call (sp_executesql).
    pub const RPC: u8 = 0x03;
    /// Server replies (token streams, and the PRELOGIN answer).
    pub const TABULAR_RESULT: u8 = 0x04;
    /// Cancel the running request.
    pub const ATTENTION: u8 = 0x06;
    /// Bulk load data.
    pub const BULK_LOAD: u8 = 0x07;
    /// Transaction manager request.
    pub const TRANSACTION_MANAGER: u8 = 0x0E;
    /// LOGIN7.
    pub const LOGIN7: u8 = 0x10;
    /// SSPI continuation.
    pub const SSPI: u8 = 0x11;
    /// PRELOGIN.
    pub const PRELOGIN: u8 = 0x12;

    /// Types a client may send (anything else means the peer is not a TDS
    /// client, e.g. an HTTP request or a bare TLS handshake).
    pub fn is_client_type(ty: u8) -> bool {
        matches!(ty, SQL_BATCH | RPC | ATTENTION | BULK_LOAD | TRANSACTION_MANAGER | LOGIN7 | SSPI | PRELOGIN)
    }
}

const STATUS_EOM: u8 = 0x01;

/// One reassembled client message.
#[derive(Debug)]
pub struct Message {
    /// Packet type of the message (from its first packet).
    pub kind: u8,
    /// Concatenated payloads of all its packets.
    pub payload: Vec<u8>,
}

/// Reads one whole message. `Ok(None)` means the client closed the connection
/// cleanly between messages.
///
/// Errors (`InvalidData`) on headers that cannot be valid: length shorter than
/// a header, packets of one message with different types, oversized messages.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Message>> {
    let mut payload = Vec::new();
    let mut kind = None;

    loop {
        let mut header = [0u8; HEADER_LEN];
        if kind.is_none() {
            // A clean EOF is only acceptable before the first byte of a message.
            match r.read(&mut header[..1]).await? {
                0 => return Ok(None),
                _ => r.read_exact(&mut header[1..]).await?,
            };
        } else {
            r.read_exact(&mut header).await?;
        }

        let ty = header[0];
        let status = header[1];
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        if !kind::is_client_type(ty) {
            return Err(invalid(format!("{ty:#04x} is not a TDS client packet type")));
        }
        if len < HEADER_LEN {
            return Err(invalid(format!("packet length {len} is shorter than its header")));
        }
        match kind {
            None => kind = Some(ty),
            Some(k) if k != ty => {
                return Err(invalid(format!("packet type changed within a message ({k:#04x} then {ty:#04x})")))
            }
            Some(_) => {}
        }
        let body = len - HEADER_LEN;
        if payload.len() + body > MAX_MESSAGE_LEN {
            return Err(invalid("message exceeds the size this test server accepts"));
        }
        let start = payload.len();
        payload.resize(start + body, 0);
        r.read_exact(&mut payload[start..]).await?;

        if status & STATUS_EOM != 0 {
            return Ok(Some(Message { kind: ty, payload }));
        }
    }
}

/// Writes `payload` as one message of packets of at most `packet_size` bytes
/// (header included), then flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
    packet_size: usize,
    spid: u16,
) -> io::Result<()> {
    let out = frame(kind, payload, packet_size, spid);
    w.write_all(&out).await?;
    w.flush().await
}

/// Splits a message into packets (separate from I/O for unit tests).
pub fn frame(kind: u8, payload: &[u8], packet_size: usize, spid: u16) -> Vec<u8> {
    let chunk = packet_size.max(HEADER_LEN + 1) - HEADER_LEN;
    let packets = payload.len().div_ceil(chunk).max(1);
    let mut out = Vec::with_capacity(payload.len() + packets * HEADER_LEN);
    let mut id: u8 = 1;
    let mut rest = payload;
    loop {
        let n = rest.len().min(chunk);
        let (part, tail) = rest.split_at(n);
        let last = tail.is_empty();
        out.push(kind);
        out.push(if last { STATUS_EOM } else { 0 });
        out.extend_from_slice(&((n + HEADER_LEN) as u16).to_be_bytes());
        out.extend_from_slice(&spid.to_be_bytes());
        out.push(id);
        out.push(0);
        out.extend_from_slice(part);
        id = id.wrapping_add(1);
        rest = tail;
        if last {
            return out;
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_packet_size_and_mark_the_last() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let out = frame(kind::TABULAR_RESULT, &payload, 4096, 7);
        // 4088 + 4088 + 1824 payload bytes.
        assert_eq!(out.len(), payload.len() + 3 * HEADER_LEN);
        assert_eq!(&out[..8], &[0x04, 0x00, 0x10, 0x00, 0x00, 0x07, 1, 0]);
        let second = 4096;
        assert_eq!(out[second + 1], 0);
        let third = 2 * 4096;
        assert_eq!(out[third + 1], STATUS_EOM);
        assert_eq!(u16::from_be_bytes([out[third + 2], out[third + 3]]), 1824 + 8);
        assert_eq!(out[third + 6], 3);
    }

    #[test]
    fn empty_message_is_one_packet() {
        let out = frame(kind::TABULAR_RESULT, &[], 4096, 0);
        assert_eq!(out, vec![0x04, 0x01, 0x00, 0x08, 0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn reads_back_what_it_frames() {
        let payload: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        let wire = frame(kind::SQL_BATCH, &payload, 512, 0);
        let mut r = &wire[..];
        let msg = read_message(&mut r).await.unwrap().unwrap();
        assert_eq!(msg.kind, kind::SQL_BATCH);
        assert_eq!(msg.payload, payload);
        assert!(read_message(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_bad_headers() {
        let mut http: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_message(&mut http).await.is_err());
        let mut short: &[u8] = &[0x01, 0x01, 0x00, 0x04, 0, 0, 0, 0];
        assert!(read_message(&mut short).await.is_err());
        let mut truncated: &[u8] = &[0x01, 0x01, 0x00, 0x20, 0, 0];
        assert!(read_message(&mut truncated).await.is_err());
        let mut mixed = frame(kind::SQL_BATCH, &[1; 600], 512, 0);
        mixed[512] = kind::RPC;
        assert!(read_message(&mut &mixed[..]).await.is_err());
    }
}

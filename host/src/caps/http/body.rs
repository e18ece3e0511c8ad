//! Request bodies made from files, host-side (`http.send-file`): the
//! file's bytes stream from disk to the socket and never enter the guest.
//! A body is prepared once (paths checked against the stage's grants,
//! lengths known) and streamed afresh for every attempt, so a retried
//! upload sends the file again from its first byte.

use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use crate::bindings::http::{FileBody, PartValue};
use crate::bindings::types::HostError;
use crate::caps::fs::resolve;
use crate::caps::StageState;

/// Bytes read from a file per chunk (a multiple of 3, so base64 chunks
/// need no padding but the last).
const CHUNK: usize = 48 * 1024;

/// One piece of a body.
#[derive(Clone, Debug)]
enum Segment {
    Bytes(Bytes),
    File { path: PathBuf, len: u64, base64: bool },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { len, base64: false, .. } => *len,
            Segment::File { len, base64: true, .. } => len.div_ceil(3) * 4,
        }
    }
}

/// A body ready to be streamed, as many times as needed.
#[derive(Clone, Debug)]
pub struct FileRequestBody {
    segments: Vec<Segment>,
    /// The `Content-Type` the body needs (multipart's boundary), if any.
    pub content_type: Option<String>,
}

impl FileRequestBody {
    /// Checks every file against the stage's grants and measures it.
    pub fn prepare(state: &StageState, body: &FileBody) -> Result<FileRequestBody, HostError> {
        let file = |f: &crate::bindings::types::FileRef, base64: bool| -> Result<Segment, HostError> {
            let path = resolve(state, f)?;
            let md = std::fs::metadata(&path)
                .map_err(|e| crate::caps::fs::io_error(&format!("`{}:{}`", f.root, f.path), e))?;
            if !md.is_file() {
                return Err(HostError::Invalid(format!("`{}:{}` is not a file", f.root, f.path)));
            }
            Ok(Segment::File { path, len: md.len(), base64 })
        };
        match body {
            FileBody::Raw(f) => Ok(FileRequestBody { segments: vec![file(f, false)?], content_type: None }),
            FileBody::Base64(b) => {
                if b.placeholder.is_empty() {
                    return Err(HostError::Invalid("base64 body: the placeholder is empty".into()));
                }
                let mut pieces = b.template.split(b.placeholder.as_str());
                let (Some(before), Some(after), None) = (pieces.next(), pieces.next(), pieces.next()) else {
                    return Err(HostError::Invalid(format!(
                        "base64 body: the template must contain the placeholder `{}` exactly once",
                        b.placeholder
                    )));
                };
                let segments = vec![
                    Segment::Bytes(Bytes::copy_from_slice(before.as_bytes())),
                    file(&b.file, true)?,
                    Segment::Bytes(Bytes::copy_from_slice(after.as_bytes())),
                ];
                Ok(FileRequestBody { segments, content_type: None })
            }
            FileBody::Multipart(parts) => {
                let boundary = format!("ferry-{}", hex::encode(rand_bytes()));
                let mut segments = Vec::new();
                for p in parts {
                    check_header_text("part name", &p.name)?;
                    let head = match &p.value {
                        PartValue::Text(_) => {
                            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n", p.name)
                        }
                        PartValue::File(f) => {
                            check_header_text("part filename", &f.filename)?;
                            check_header_text("part content type", &f.content_type)?;
                            format!(
                                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                                p.name, f.filename, f.content_type
                            )
                        }
                    };
                    segments.push(Segment::Bytes(head.into()));
                    match &p.value {
                        PartValue::Text(t) => segments.push(Segment::Bytes(Bytes::copy_from_slice(t.as_bytes()))),
                        PartValue::File(f) => segments.push(file(&f.file, false)?),
                    }
                    segments.push(Segment::Bytes(Bytes::from_static(b"\r\n")));
                }
                segments.push(Segment::Bytes(format!("--{boundary}--\r\n").into()));
                Ok(FileRequestBody {
                    segments,
                    content_type: Some(format!("multipart/form-data; boundary={boundary}")),
                })
            }
        }
    }

    /// Total bytes on the wire (the `Content-Length`).
    pub fn content_length(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// A fresh stream of the whole body, each chunk sent when `pace`'s
    /// throttle lets it (at once without one).
    pub fn stream(&self, pace: crate::pace::Pace) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        stream::iter(self.segments.clone())
            .flat_map(|s| match s {
                Segment::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
                Segment::File { path, len, base64 } => file_stream(path, len, base64).boxed(),
            })
            .then(move |chunk| {
                let pace = pace.clone();
                async move {
                    if let Ok(b) = &chunk {
                        pace.take(b.len() as u64).await;
                    }
                    chunk
                }
            })
    }
}

/// The file's bytes (or their base64), in chunks; an error if the file is
/// not `len` bytes long any more (the `Content-Length` is already sent).
fn file_stream(path: PathBuf, len: u64, base64: bool) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let open = async move { tokio::fs::File::open(&path).await.map(|f| (f, 0u64)) };
    stream::once(open)
        .map_ok(move |(file, _)| {
            stream::try_unfold((file, 0u64), move |(mut file, read)| async move {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                // fill whole chunks: base64 of a chunk must not need padding
                while filled < CHUNK {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                let read = read + filled as u64;
                if filled == 0 {
                    if read != len {
                        return Err(changed(read, len));
                    }
                    return Ok(None);
                }
                if read > len {
                    return Err(changed(read, len));
                }
                buf.truncate(filled);
                let out: Vec<u8> =
                    if base64 { base64::engine::general_purpose::STANDARD.encode(&buf).into() } else { buf };
                Ok(Some((Bytes::from(out), (file, read))))
            })
        })
        .try_flatten()
}

fn changed(read: u64, len: u64) -> std::io::Error {
    std::io::Error::other(format!("the file changed while it was being sent ({read} bytes instead of {len})"))
}

/// Text that goes into a part's header: no quotes or line breaks.
fn check_header_text(what: &str, s: &str) -> Result<(), HostError> {
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(HostError::Invalid(format!(
            "multipart {what} `{s}` contains a quote, backslash or control character"
        )));
    }
    Ok(())
}

/// 12 bytes for a boundary (uniqueness, not secrecy).
fn rand_bytes() -> [u8; 12] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 12];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: &FileRequestBody) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(body.stream(crate::pace::Pace::none()));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn streamed_bodies_are_what_they_claim_at_every_chunk_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 2] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("f{n}"));
            std::fs::write(&path, &data).unwrap();
            for base64 in [false, true] {
                let body = FileRequestBody {
                    segments: vec![
                        Segment::Bytes(Bytes::from_static(b"<")),
                        Segment::File { path: path.clone(), len: n as u64, base64 },
                        Segment::Bytes(Bytes::from_static(b">")),
                    ],
                    content_type: None,
                };
                let got = collect(&body).await.unwrap();
                let inner = if base64 {
                    base64::engine::general_purpose::STANDARD.encode(&data).into_bytes()
                } else {
                    data.clone()
                };
                let want = [b"<".as_slice(), &inner, b">"].concat();
                assert_eq!(got, want, "n={n} base64={base64}");
                assert_eq!(body.content_length(), want.len() as u64, "Content-Length for n={n} base64={base64}");
            }
        }
    }

    #[test]
    fn part_headers_refuse_quotes_and_line_breaks() {
        for bad in ["a\"b", "a\r\nX-Injected: 1", "a\\b", "tab\there"] {
            let e = check_header_text("part filename", bad).unwrap_err();
            assert!(matches!(&e, HostError::Invalid(m) if m.contains("quote, backslash or control")), "{bad:?}: {e:?}");
        }
        assert!(check_header_text("part filename", "Röntgen 2024-03.pdf").is_ok());
    }

    #[tokio::test]
    async fn a_file_that_changed_size_fails_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        for claimed in [4, 6] {
            let body = FileRequestBody {
                segments: vec![Segment::File { path: path.clone(), len: claimed, base64: false }],
                content_type: None,
            };
            let e = collect(&body).await.unwrap_err().to_string();
            assert!(e.contains("changed while it was being sent"), "{claimed}: {e}");
        }
    }
}

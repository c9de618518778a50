//! Reading an HTTP/1.1 answer on a connection the client wrote a request to: its head
//! (1xx interim answers skipped), then its body as framed (a length, chunks, or the end of
//! the connection), kept up to a cap. `httparse` parses the head and the chunk sizes.

use std::io;

use super::client::Stream;

/// The longest answer head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 100;

/// An answer's head.
pub(super) struct Head {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) framing: Framing,
    /// HTTP/1.1 without `Connection: close`.
    pub(super) keep_alive: bool,
}

/// How the answer's body ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

impl Head {
    /// Parses a head from the start of `buf`: `Ok(None)` when more is needed.
    fn parse(buf: &[u8]) -> io::Result<Option<(usize, Head)>> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(format!("invalid HTTP answer: {e}"))),
        };
        let status = response.code.unwrap_or_default();
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let field = |name: &'static str| {
            headers
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(_, v)| v.trim())
        };
        let chunked = field("transfer-encoding")
            .next_back()
            .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"));
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Empty
        } else if chunked {
            Framing::Chunked
        } else if let Some(length) = field("content-length").next() {
            let length = length
                .parse()
                .map_err(|_| invalid(format!("invalid Content-Length: {length}")))?;
            Framing::Length(length)
        } else {
            Framing::Close
        };
        let close = field("connection").any(|v| v.eq_ignore_ascii_case("close"));
        let keep_alive = response.version == Some(1) && !close && framing != Framing::Close;
        Ok(Some((
            len,
            Head {
                status,
                headers,
                framing,
                keep_alive,
            },
        )))
    }
}

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

/// The answer's body as far as it is kept.
pub(super) struct Body {
    pub(super) data: Vec<u8>,
    pub(super) cap: usize,
    pub(super) truncated: bool,
}

impl Body {
    /// Keeps what fits; false once the cap is passed (the rest is not read).
    fn push(&mut self, bytes: &[u8]) -> bool {
        let room = self.cap - self.data.len();
        if bytes.len() > room {
            self.data.extend_from_slice(&bytes[..room]);
            self.truncated = true;
            return false;
        }
        self.data.extend_from_slice(bytes);
        true
    }
}

/// Reads an answer from a stream through a buffer.
pub(super) struct Reader<'a> {
    pub(super) stream: &'a mut Stream,
    pub(super) buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(stream: &'a mut Stream) -> Reader<'a> {
        Reader {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub(super) fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more; an end of stream is an `UnexpectedEof` error.
    async fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        match self.stream.read_more(&mut self.buf).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// The first head that is not a 1xx interim answer (101 aside, which this client never
    /// asks for).
    pub(super) async fn head(&mut self) -> io::Result<Head> {
        loop {
            match Head::parse(self.unread())? {
                Some((len, head)) => {
                    self.pos += len;
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    return Ok(head);
                }
                None if self.unread().len() > MAX_HEAD => {
                    return Err(invalid(format!("answer head over {MAX_HEAD} bytes")));
                }
                None => self.fill().await?,
            }
        }
    }

    /// Reads the body as framed, into `body` up to its cap.
    pub(super) async fn body(&mut self, framing: &Framing, body: &mut Body) -> io::Result<()> {
        match framing {
            Framing::Empty => Ok(()),
            Framing::Length(length) => self.exactly(*length, body).await,
            Framing::Close => loop {
                let unread = self.unread().len();
                let room = body.push(self.unread());
                self.pos += unread;
                if !room {
                    return Ok(());
                }
                match self.fill().await {
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    other => other?,
                }
            },
            Framing::Chunked => loop {
                let size = match httparse::parse_chunk_size(self.unread()) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.pos += len;
                        size
                    }
                    Ok(httparse::Status::Partial) => {
                        self.fill().await?;
                        continue;
                    }
                    Err(_) => return Err(invalid("invalid chunk size".to_owned())),
                };
                if size == 0 {
                    return self.trailers().await;
                }
                self.exactly(size, body).await?;
                if body.truncated {
                    return Ok(());
                }
                self.expect_line_end().await?;
            },
        }
    }

    /// Reads `length` bytes of body, stopping early once the cap is passed.
    async fn exactly(&mut self, mut length: u64, body: &mut Body) -> io::Result<()> {
        loop {
            let take = self.unread().len().min(length as usize);
            let room = body.push(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            length -= take as u64;
            if length == 0 || !room {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    async fn expect_line_end(&mut self) -> io::Result<()> {
        while self.unread().len() < 2 {
            self.fill().await?;
        }
        if &self.unread()[..2] != b"\r\n" {
            return Err(invalid("a chunk does not end with CRLF".to_owned()));
        }
        self.pos += 2;
        Ok(())
    }

    /// Skips the trailer fields after the last chunk, up to the empty line.
    async fn trailers(&mut self) -> io::Result<()> {
        loop {
            match self.unread().windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.pos += 2;
                    return Ok(());
                }
                Some(end) => self.pos += end + 2,
                None if self.unread().len() > MAX_HEAD => {
                    return Err(invalid("trailers too long".to_owned()));
                }
                None => self.fill().await?,
            }
        }
    }
}

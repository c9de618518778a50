//! The HTTP/1.1 client deliveries go out with: one request, one answer, in the attempt's own
//! task, with idle connections kept per origin for the next attempt.
//!
//! Why not reqwest: with 10,000 attempts in flight, hyper's client held about 30 KiB per
//! connection (an 8 KiB read buffer, an 8 KiB write buffer, a 9 KiB request channel block
//! and reqwest's own state) plus a task per connection that every request and answer
//! crosses. A delivery is one request of one shape, so this client writes it with one
//! buffer and reads the answer in the same task (`answer`), parsing it with `httparse`
//! (hyper's parser). TLS is rustls with the platform's verifier, as reqwest had it.
//!
//! What it does: `http` and `https` (HTTP/1.1 only, by ALPN); every address connected to is
//! checked by the [`Guard`]; answers framed by `Content-Length`, chunked or by the end of
//! the connection; 1xx answers skipped; the body read up to a cap. A connection goes back
//! to the pool only after a whole answer that lets it (HTTP/1.1, no `Connection: close`),
//! and a pooled one is used once more only if the server has not closed it meanwhile; a
//! request on a pooled connection that dies before any answer is sent again on a new one.
//!
//! What it does not: redirects (never followed), proxies, HTTP/2, compression, cookies.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::answer::{Body, Reader};
use super::guard::Guard;

/// An idle connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// What the read buffer starts with: a usual answer head fits.
const FIRST_READ: usize = 1024;

/// Why an attempt got no answer: `code` is the attempt log's `error_code` (`blocked`,
/// `dns`, `connect`, `tls` or `timeout`), `detail` says what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub code: &'static str,
    pub detail: String,
}

impl Failed {
    fn new(code: &'static str, detail: impl Into<String>) -> Failed {
        Failed {
            code,
            detail: detail.into(),
        }
    }
}

/// One request: `head_fields` are written as they are, after `Host`.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub head_fields: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than the cap and was cut there.
    pub truncated: bool,
}

/// The client; share one per dispatcher.
pub struct Client {
    guard: Arc<Guard>,
    tls: TlsConnector,
    connect_timeout: Duration,
    timeout: Duration,
    pool: Mutex<Pool>,
}

impl Client {
    /// `connect_timeout` bounds resolving, connecting and the TLS handshake; `timeout` the
    /// whole exchange. At most `max_idle` idle connections are kept per origin. Servers are
    /// verified by the platform's verifier and trust store.
    pub fn new(
        guard: Arc<Guard>,
        connect_timeout: Duration,
        timeout: Duration,
        max_idle: usize,
    ) -> Result<Client, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth();
        Ok(Client::with_tls(
            guard,
            tls,
            connect_timeout,
            timeout,
            max_idle,
        ))
    }

    /// As [`Client::new`], with this TLS configuration (its ALPN is set to HTTP/1.1).
    pub fn with_tls(
        guard: Arc<Guard>,
        mut tls: rustls::ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
        max_idle: usize,
    ) -> Client {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            guard,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            timeout,
            pool: Mutex::new(Pool::new(max_idle)),
        }
    }

    /// Sends `request` and reads the answer's body up to `max_body` bytes. The answer's
    /// head must arrive within the timeout; a body still coming then is cut there.
    pub async fn send(&self, request: &Request<'_>, max_body: usize) -> Result<Response, Failed> {
        let deadline = Instant::now() + self.timeout;
        let url = url::Url::parse(request.url)
            .map_err(|e| Failed::new("connect", format!("bad URL: {e}")))?;
        let origin = Origin::of(&url)?;
        let mut wire = request_bytes(request, &url);
        let pooled = self.lock_pool().take(&origin);
        if let Some(stream) = pooled {
            match self.exchange(stream, true, wire, deadline, max_body).await {
                Err(Exchange::Stale(unanswered)) => wire = unanswered,
                done => return self.finish(origin, done),
            }
        }
        // Boxed: the handshake's state is large and not needed once connected, while the
        // rest of the exchange may wait for seconds.
        let stream = Box::pin(self.connect(&origin, deadline)).await?;
        let done = self.exchange(stream, false, wire, deadline, max_body).await;
        self.finish(origin, done)
    }

    fn finish(&self, origin: Origin, done: Result<Done, Exchange>) -> Result<Response, Failed> {
        match done {
            Ok(done) => {
                if let Some(stream) = done.reusable {
                    self.lock_pool().put(origin, stream);
                }
                Ok(done.response)
            }
            Err(Exchange::Failed(failed)) => Err(failed),
            Err(Exchange::Stale(_)) => Err(Failed::new(
                "connect",
                "the connection closed before any answer",
            )),
        }
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves `origin` to permitted addresses, connects to the first that answers, and
    /// shakes hands over TLS for `https`.
    async fn connect(&self, origin: &Origin, deadline: Instant) -> Result<Stream, Failed> {
        let limit = deadline.min(Instant::now() + self.connect_timeout);
        let connecting = async {
            let addrs = self.resolve(origin).await?;
            let tcp = connect_any(&addrs, limit).await?;
            let _ = tcp.set_nodelay(true);
            if !origin.https {
                return Ok(Stream::Plain(tcp));
            }
            let name = match origin.ip {
                Some(ip) => ServerName::IpAddress(ip.into()),
                None => ServerName::try_from(origin.host.clone())
                    .map_err(|e| Failed::new("tls", format!("{}: {e}", origin.host)))?,
            };
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| Failed::new("tls", format!("TLS handshake failed: {e}")))?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        match timeout_at(limit, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(Failed::new(
                "timeout",
                format!("connecting to {} took too long", origin.host),
            )),
        }
    }

    /// The addresses of `origin` the guard permits: an IP literal is checked as it is, a
    /// name is resolved and refused addresses are dropped, so DNS rebinding gains nothing.
    async fn resolve(&self, origin: &Origin) -> Result<Vec<SocketAddr>, Failed> {
        if let Some(ip) = origin.ip {
            self.guard
                .check(ip)
                .map_err(|b| Failed::new("blocked", b.to_string()))?;
            return Ok(vec![SocketAddr::new(ip, origin.port)]);
        }
        let resolved: Vec<SocketAddr> =
            tokio::net::lookup_host((origin.host.as_str(), origin.port))
                .await
                .map_err(|e| Failed::new("dns", format!("resolving {}: {e}", origin.host)))?
                .collect();
        let permitted: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|a| self.guard.permits(a.ip()))
            .collect();
        match resolved.first() {
            None => Err(Failed::new(
                "dns",
                format!("{} has no addresses", origin.host),
            )),
            Some(refused) if permitted.is_empty() => Err(Failed::new(
                "blocked",
                super::guard::Blocked(refused.ip()).to_string(),
            )),
            Some(_) => Ok(permitted),
        }
    }

    /// Writes the request `wire` and reads the answer on `stream` (`pooled`: it carried
    /// an earlier request, and `wire` is kept to be sent again should it turn out closed).
    async fn exchange(
        &self,
        mut stream: Stream,
        pooled: bool,
        wire: Vec<u8>,
        deadline: Instant,
        max_body: usize,
    ) -> Result<Done, Exchange> {
        let mut reader = Reader::new(&mut stream);
        let mut wire = Some(wire);
        let sending = async {
            let bytes = wire.as_deref().unwrap_or_default();
            reader.stream.write_all(bytes).await?;
            // While the answer is awaited, the request is held only if it may be resent.
            if !pooled {
                wire = None;
            }
            reader.head().await
        };
        let head = match timeout_at(deadline, sending).await {
            Ok(Ok(head)) => head,
            Ok(Err(e)) if pooled && reader.buf.is_empty() && is_closed(&e) => {
                return Err(Exchange::Stale(wire.unwrap_or_default()));
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let detail = "the connection closed before a whole answer";
                return Err(Exchange::Failed(Failed::new("connect", detail)));
            }
            Ok(Err(e)) => return Err(Exchange::Failed(Failed::new("connect", e.to_string()))),
            Err(_) => {
                let detail = format!("no answer within {:?}", self.timeout);
                return Err(Exchange::Failed(Failed::new("timeout", detail)));
            }
        };
        let mut body = Body {
            data: Vec::new(),
            cap: max_body,
            truncated: false,
        };
        // A body that fails or runs out of time is kept as far as it came: the status
        // arrived, and it says what it says.
        let complete = matches!(
            timeout_at(deadline, reader.body(&head.framing, &mut body)).await,
            Ok(Ok(()))
        );
        let leftover = !reader.unread().is_empty();
        let reusable = complete && !body.truncated && head.keep_alive && !leftover;
        Ok(Done {
            response: Response {
                status: head.status,
                headers: head.headers,
                body: body.data,
                truncated: body.truncated,
            },
            reusable: reusable.then_some(stream),
        })
    }
}

/// Connects to the first of `addrs` that answers, each given an equal share of the time
/// left before `limit`, so one address that drops packets does not use it all.
async fn connect_any(addrs: &[SocketAddr], limit: Instant) -> Result<TcpStream, Failed> {
    let mut last = Failed::new("connect", "no address to connect to");
    for (i, addr) in addrs.iter().enumerate() {
        let share = limit.saturating_duration_since(Instant::now()) / (addrs.len() - i) as u32;
        last = match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => Failed::new("connect", format!("{addr}: {e}")),
            Err(_) => Failed::new("timeout", format!("connecting to {addr} took too long")),
        };
    }
    Err(last)
}

/// Whether an error says the peer closed the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// How an exchange ended without a response.
enum Exchange {
    /// A pooled connection turned out closed before any answer: send this again on a new
    /// one.
    Stale(Vec<u8>),
    Failed(Failed),
}

struct Done {
    response: Response,
    /// The connection, when it may carry another request.
    reusable: Option<Stream>,
}

/// Where a request goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    https: bool,
    host: String,
    /// The host, when it is an IP literal.
    ip: Option<IpAddr>,
    port: u16,
}

impl Origin {
    fn of(url: &url::Url) -> Result<Origin, Failed> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(Failed::new(
                    "connect",
                    format!("unsupported scheme {other}"),
                ));
            }
        };
        let (host, ip) = match url.host() {
            Some(url::Host::Domain(name)) => (name.to_owned(), None),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
            None => return Err(Failed::new("connect", "the URL has no host")),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        Ok(Origin {
            https,
            host,
            ip,
            port,
        })
    }
}

/// The request as sent: request line, `Host`, the given fields, `Content-Length` when there
/// is a body, and the body.
fn request_bytes(request: &Request<'_>, url: &url::Url) -> Vec<u8> {
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let target = if target.is_empty() { "/" } else { target };
    let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let mut wire = Vec::with_capacity(256 + request.body.len());
    let method = request.method.to_ascii_uppercase();
    wire.extend_from_slice(format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n").as_bytes());
    for (name, value) in request.head_fields {
        // Values are ours (signatures, ids, numbers); a line break would end the head.
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        wire.extend_from_slice(name.as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    if !request.body.is_empty() || method != "GET" {
        wire.extend_from_slice(format!("content-length: {}\r\n", request.body.len()).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(request.body);
    wire
}

/// A connection, plain or over TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(bytes).await,
            Stream::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    /// Reads what has arrived onto the end of `buf`. On a plain connection `buf` grows only
    /// once there is something to read, so an attempt waiting for its answer holds no
    /// buffer.
    pub(super) async fn read_more(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => loop {
                tcp.readable().await?;
                make_room(buf);
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            },
            Stream::Tls(tls) => {
                make_room(buf);
                tls.read_buf(buf).await
            }
        }
    }

    /// Whether the server has left it alone while idle: nothing to read and not closed.
    /// (Anything an idle HTTP/1.1 server sends, a TLS alert included, means it is done.)
    fn untouched(&self) -> bool {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        };
        matches!(tcp.try_read(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Makes room in `buf` for a read: at least half of [`FIRST_READ`], doubling as it grows.
fn make_room(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < FIRST_READ / 2 {
        buf.reserve(FIRST_READ.max(buf.len()));
    }
}

/// Idle connections by origin, newest last.
struct Pool {
    idle: HashMap<Origin, Vec<(Stream, Instant)>>,
    max_idle: usize,
    swept: Instant,
}

impl Pool {
    fn new(max_idle: usize) -> Pool {
        Pool {
            idle: HashMap::new(),
            max_idle,
            swept: Instant::now(),
        }
    }

    /// The newest idle connection to `origin` still open; older or closed ones are dropped.
    fn take(&mut self, origin: &Origin) -> Option<Stream> {
        let idle = self.idle.get_mut(origin)?;
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && stream.untouched() {
                return Some(stream);
            }
        }
        None
    }

    fn put(&mut self, origin: Origin, stream: Stream) {
        let now = Instant::now();
        if now.duration_since(self.swept) > IDLE_TIMEOUT / 3 {
            self.swept = now;
            for idle in self.idle.values_mut() {
                idle.retain(|(_, since)| now.duration_since(*since) < IDLE_TIMEOUT);
            }
            self.idle.retain(|_, idle| !idle.is_empty());
        }
        let idle = self.idle.entry(origin).or_default();
        if idle.len() < self.max_idle {
            idle.push((stream, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpListener;

    /// What the scripted server does with a request it has read.
    #[derive(Clone, Copy)]
    enum Reply {
        Send(&'static str),
        /// Sends, then closes the connection.
        SendAndClose(&'static str),
        /// Closes the connection without an answer.
        Close,
        /// Sends this head, then nothing more for a long time.
        Stall(&'static str),
    }

    /// A server on 127.0.0.1 that answers request `n` of connection `c` with `script(c, n)`,
    /// and the requests it read, with their connection's number.
    struct Server {
        url: String,
        requests: Arc<Mutex<Vec<(usize, String)>>>,
    }

    impl Server {
        async fn start(script: fn(usize, usize) -> Reply) -> Server {
            Server::start_with(None, script).await
        }

        /// Over TLS when `tls` is given.
        async fn start_with(
            tls: Option<tokio_rustls::TlsAcceptor>,
            script: fn(usize, usize) -> Reply,
        ) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let scheme = if tls.is_some() { "https" } else { "http" };
            let addr = listener.local_addr().expect("addr");
            let url = format!("{scheme}://{addr}/hooks?x=1");
            let requests: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
            let seen = requests.clone();
            tokio::spawn(async move {
                for c in 0.. {
                    let (socket, _) = listener.accept().await.expect("accept");
                    let (seen, tls) = (seen.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => serve(socket, c, script, seen).await,
                            Some(tls) => {
                                if let Ok(socket) = tls.accept(socket).await {
                                    serve(socket, c, script, seen).await;
                                }
                            }
                        }
                    });
                }
            });
            Server { url, requests }
        }

        fn requests(&self) -> Vec<(usize, String)> {
            self.requests.lock().expect("lock").clone()
        }

        /// The connection each request came on, in order.
        fn connections(&self) -> Vec<usize> {
            self.requests().iter().map(|(c, _)| *c).collect()
        }
    }

    /// Answers the requests of connection `c` as `script` says.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut socket: S,
        c: usize,
        script: fn(usize, usize) -> Reply,
        seen: Arc<Mutex<Vec<(usize, String)>>>,
    ) {
        for n in 0.. {
            let Some(request) = read_request(&mut socket).await else {
                return;
            };
            seen.lock().expect("lock").push((c, request));
            let reply = script(c, n);
            let bytes = match reply {
                Reply::Send(b) | Reply::SendAndClose(b) | Reply::Stall(b) => b,
                Reply::Close => return,
            };
            if socket.write_all(bytes.as_bytes()).await.is_err() || socket.flush().await.is_err() {
                return;
            }
            match reply {
                Reply::SendAndClose(_) => return,
                Reply::Stall(_) => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    return;
                }
                _ => {}
            }
        }
    }

    /// One request's head and body, or `None` at the end of the connection.
    async fn read_request<S: AsyncRead + Unpin>(socket: &mut S) -> Option<String> {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if socket.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().expect("a length"));
        while buf.len() < end + length {
            if socket.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    fn client(timeout: Duration) -> Client {
        let guard = Guard::new(vec!["127.0.0.0/8".parse().expect("net")]);
        Client::new(Arc::new(guard), Duration::from_secs(1), timeout, 8).expect("client")
    }

    fn post(url: &str) -> Request<'_> {
        Request {
            method: "post",
            url,
            head_fields: &[],
            body: b"{\"a\":1}",
        }
    }

    async fn send(client: &Client, url: &str, max_body: usize) -> Result<Response, Failed> {
        client.send(&post(url), max_body).await
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn requests_are_written_whole_and_a_kept_alive_connection_is_reused() {
        let server = Server::start(|_, _| Reply::Send(OK)).await;
        let client = client(Duration::from_secs(2));
        let fields = [("webhook-id".to_owned(), "WH1".to_owned())];
        let request = Request {
            head_fields: &fields,
            ..post(&server.url)
        };
        for _ in 0..3 {
            let response = client.send(&request, 100).await.expect("an answer");
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..])
            );
            assert!(!response.truncated);
        }
        let requests = server.requests();
        assert_eq!(requests.len(), 3);
        assert!(
            requests.iter().all(|(c, _)| *c == 0),
            "one connection: {requests:?}"
        );
        let port = server
            .url
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next());
        assert_eq!(
            requests[0].1,
            format!(
                "POST /hooks?x=1 HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nwebhook-id: WH1\r\n\
                 content-length: 7\r\n\r\n{{\"a\":1}}",
                port.expect("port")
            )
        );
    }

    #[tokio::test]
    async fn a_get_carries_no_body_and_no_length() {
        let server = Server::start(|_, _| Reply::Send(OK)).await;
        let request = Request {
            method: "get",
            body: b"",
            ..post(&server.url)
        };
        client(Duration::from_secs(2))
            .send(&request, 100)
            .await
            .expect("an answer");
        let (_, sent) = &server.requests()[0];
        assert!(sent.starts_with("GET /hooks?x=1 HTTP/1.1\r\n"), "{sent}");
        assert!(!sent.contains("content-length"), "{sent}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_joined_and_interim_answers_skipped() {
        let server = Server::start(|_, _| {
            Reply::Send(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\
                 X-Seen: yes\r\n\r\n4\r\nRust\r\n6;ext=1\r\n is ok\r\n0\r\nx-trailer: 1\r\n\r\n",
            )
        })
        .await;
        let client = client(Duration::from_secs(2));
        for _ in 0..2 {
            let response = send(&client, &server.url, 100).await.expect("an answer");
            assert_eq!(response.status, 201);
            assert_eq!(response.body, b"Rust is ok");
            assert!(
                response
                    .headers
                    .contains(&("x-seen".to_owned(), "yes".to_owned()))
            );
        }
        assert!(
            server.connections().iter().all(|c| *c == 0),
            "the connection is reused after a whole chunked body"
        );
    }

    #[tokio::test]
    async fn bodies_ended_by_close_and_connection_close_are_not_reused() {
        let server = Server::start(|c, _| match c % 2 {
            0 => Reply::SendAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            _ => Reply::SendAndClose(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            ),
        })
        .await;
        let client = client(Duration::from_secs(2));
        let first = send(&client, &server.url, 100).await.expect("an answer");
        assert_eq!(first.body, b"until the end");
        let second = send(&client, &server.url, 100).await.expect("an answer");
        assert_eq!(second.body, b"ok");
        send(&client, &server.url, 100).await.expect("an answer");
        let connections = server.connections();
        assert_eq!(connections, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_pooled_connection_that_dies_unanswered_is_replaced_once() {
        // The first connection answers once, then closes on the next request unanswered:
        // the race of a server's idle timeout with a new request.
        let server = Server::start(|c, n| match (c, n) {
            (0, 0) => Reply::Send(OK),
            (0, _) => Reply::Close,
            _ => Reply::Send(OK),
        })
        .await;
        let client = client(Duration::from_secs(2));
        send(&client, &server.url, 100).await.expect("first");
        let second = send(&client, &server.url, 100).await.expect("sent again");
        assert_eq!(second.status, 200);
        let connections = server.connections();
        assert_eq!(
            connections,
            [0, 0, 1],
            "the same request, then once more on a new one"
        );
    }

    #[tokio::test]
    async fn a_new_connection_closed_unanswered_is_a_connect_failure() {
        let server = Server::start(|_, _| Reply::Close).await;
        let failed = send(&client(Duration::from_secs(2)), &server.url, 100)
            .await
            .expect_err("no answer");
        assert_eq!(failed.code, "connect", "{failed:?}");
        assert_eq!(server.requests().len(), 1, "not sent twice");
    }

    #[tokio::test]
    async fn a_body_is_cut_at_the_cap() {
        let server = Server::start(|_, _| {
            Reply::Send("HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n01234567890123456789")
        })
        .await;
        let client = client(Duration::from_secs(2));
        let response = send(&client, &server.url, 8).await.expect("an answer");
        assert_eq!(
            (response.body.as_slice(), response.truncated),
            (&b"01234567"[..], true)
        );
        send(&client, &server.url, 8).await.expect("an answer");
        let connections = server.connections();
        assert_eq!(
            connections,
            [0, 1],
            "a connection with unread body is not reused"
        );
    }

    #[tokio::test]
    async fn a_head_that_never_comes_is_a_timeout_and_a_slow_body_keeps_the_status() {
        let silent = Server::start(|_, _| Reply::Stall("")).await;
        let client = client(Duration::from_millis(300));
        let failed = send(&client, &silent.url, 100)
            .await
            .expect_err("no answer");
        assert_eq!(failed.code, "timeout", "{failed:?}");
        let slow = Server::start(|_, _| {
            Reply::Stall("HTTP/1.1 503 Busy\r\ncontent-length: 10\r\nretry-after: 7\r\n\r\npart")
        })
        .await;
        let response = send(&client, &slow.url, 100)
            .await
            .expect("the status came");
        assert_eq!(
            (response.status, response.body.as_slice()),
            (503, &b"part"[..])
        );
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_a_connect_failure() {
        let server = Server::start(|_, _| Reply::SendAndClose("SMTP ready\r\n\r\n")).await;
        let failed = send(&client(Duration::from_secs(2)), &server.url, 100)
            .await
            .expect_err("not HTTP");
        assert_eq!(failed.code, "connect");
        assert!(failed.detail.contains("invalid HTTP answer"), "{failed:?}");
    }

    #[tokio::test]
    async fn refused_addresses_are_blocked_before_connecting() {
        let server = Server::start(|_, _| Reply::Send(OK)).await;
        let port = server
            .url
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next());
        let port = port.expect("port");
        let guarded = Client::new(
            Arc::new(Guard::new(vec![])),
            Duration::from_secs(1),
            Duration::from_secs(1),
            8,
        )
        .expect("client");
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let failed = send(&guarded, &url, 100).await.expect_err("blocked");
            assert_eq!(failed.code, "blocked", "{url}: {failed:?}");
        }
        assert!(server.requests().is_empty(), "nothing reached the server");
    }

    /// A TLS acceptor for a certificate of `names`, and that certificate.
    fn tls_server(names: &[&str]) -> (tokio_rustls::TlsAcceptor, CertificateDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("a certificate");
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("a server config");
        (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert)
    }

    /// A client that trusts `root` alone.
    fn client_trusting(root: CertificateDer<'static>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).expect("a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let guard = Guard::new(vec!["127.0.0.0/8".parse().expect("net")]);
        let second = Duration::from_secs(1);
        Client::with_tls(Arc::new(guard), tls, second, second, 8)
    }

    #[tokio::test]
    async fn https_answers_come_over_a_verified_kept_alive_connection() {
        let (acceptor, cert) = tls_server(&["localhost", "127.0.0.1"]);
        let server = Server::start_with(Some(acceptor), |_, _| Reply::Send(OK)).await;
        let client = client_trusting(cert);
        let by_name = server.url.replace("127.0.0.1", "localhost");
        for url in [&server.url, &server.url, &by_name] {
            let response = send(&client, url, 100).await.expect("an answer");
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..])
            );
        }
        let connections = server.connections();
        assert_eq!(
            connections,
            [0, 0, 1],
            "one connection per origin, kept alive"
        );
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_a_tls_failure() {
        let (acceptor, cert) = tls_server(&["other.example"]);
        let server = Server::start_with(Some(acceptor), |_, _| Reply::Send(OK)).await;
        let failed = send(&client_trusting(cert), &server.url, 100)
            .await
            .expect_err("the name does not match");
        assert_eq!(failed.code, "tls", "{failed:?}");
        assert!(server.requests().is_empty(), "nothing was sent");
    }
}

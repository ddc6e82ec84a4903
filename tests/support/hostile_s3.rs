//! Hostile S3 servers for the attack tier, answering on loopback from
//! threads of their own and stopped on drop:
//! - [`HostileS3`] speaks just enough S3 (path-style listings, HEAD, ranged
//!   GET) to be mounted, and then misbehaves as a [`Hostility`] says: every
//!   listing page full and promising another (forever), GET bodies that go
//!   on past the range asked for, one listing page that never ends, or an
//!   error whose body never ends. It counts what it was asked and how much
//!   it sent.
//! - [`CountingEndpoint`] accepts connections, never answers, and counts
//!   them: proof that a request was (or was not) sent somewhere.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Keys on each page of an endless listing.
pub const KEYS_PER_PAGE: usize = 1000;
/// The one object a server with [`Hostility::OversizedBodies`] lists.
pub const OBJECT_KEY: &str = "big";
/// Its size, as listed and as HEAD says.
pub const OBJECT_SIZE: u64 = 64 * 1024 * 1024;
/// The most a server sends in one response body before it gives up (keeps a
/// test whose agent does not stop reading from eating the machine).
pub const MAX_BODY_SENT: u64 = 768 * 1024 * 1024;

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// Every listing page is full and has a continuation token, forever.
    EndlessListing,
    /// Lists and HEADs one object ([`OBJECT_KEY`], [`OBJECT_SIZE`] bytes)
    /// honestly; every GET answers 206 with the `Content-Range` asked for
    /// and then a chunked body that does not stop at the range.
    OversizedBodies,
    /// The first listing page is a 200 whose chunked body never ends
    /// (`<Contents>` after `<Contents>`, never closed).
    OversizedListingPage,
    /// Every request is refused (403) with a chunked error body that never
    /// ends.
    OversizedErrorBody,
}

#[derive(Debug, Default)]
struct Counters {
    listings: AtomicUsize,
    heads: AtomicUsize,
    gets: AtomicUsize,
    /// The largest body sent in one response.
    largest_body: AtomicU64,
}

/// The server.
pub struct HostileS3 {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileS3 {
    /// Starts it on a free loopback port.
    pub fn start(hostility: Hostility) -> HostileS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        // Connection threads end when their peer goes, the
                        // server stops, or a write times out.
                        Ok((stream, _)) => {
                            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
                            std::thread::spawn(move || serve(stream, hostility, &counters, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        HostileS3 {
            addr,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A spec mounting bucket `bucket` of this server anonymously.
    pub fn spec(&self, bucket: &str) -> serde_json::Value {
        serde_json::json!({"source": {"s3": {
            "bucket": bucket, "endpoint": self.endpoint(), "region": "x",
            "pathStyle": true, "credentials": "anonymous"}}})
    }

    /// Listing requests answered so far.
    pub fn pages_sent(&self) -> usize {
        self.counters.listings.load(Ordering::Relaxed)
    }

    /// Object GETs asked so far.
    pub fn gets(&self) -> usize {
        self.counters.gets.load(Ordering::Relaxed)
    }

    /// The largest response body it sent (or began to) so far, bytes.
    pub fn largest_body_sent(&self) -> u64 {
        self.counters.largest_body.load(Ordering::Relaxed)
    }
}

impl Drop for HostileS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request head: method, target and the `Range` header.
struct Request {
    method: String,
    target: String,
    range: Option<(u64, u64)>,
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut words = request_line.split_whitespace();
    let method = words.next()?.to_string();
    let target = words.next()?.to_string();
    let mut range = None;
    // Requests carry no body: the head ends with an empty line.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = value
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        }
    }
    Some(Request {
        method,
        target,
        range,
    })
}

/// The value of query parameter `name` in `target` (undecoded).
fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Answers the requests of one keep-alive connection.
fn serve(stream: TcpStream, hostility: Hostility, counters: &Counters, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone a stream"));
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let listing = request.target.contains("list-type=2");
        let answered = match (hostility, request.method.as_str(), listing) {
            (Hostility::EndlessListing, _, _) => {
                let page = counters.listings.fetch_add(1, Ordering::Relaxed);
                write_all(&mut writer, &endless_page(page))
            }
            (Hostility::OversizedListingPage, _, _) => {
                counters.listings.fetch_add(1, Ordering::Relaxed);
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n";
                let mut first = String::from(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>",
                );
                let entry = "<Contents><Key>k</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents>";
                let mut chunk = String::new();
                while chunk.len() < 64 * 1024 {
                    chunk.push_str(entry);
                }
                first.push_str(&chunk);
                write_all(&mut writer, head.as_bytes())
                    && endless_chunks(
                        &mut writer,
                        first.as_bytes(),
                        chunk.as_bytes(),
                        counters,
                        stop,
                    )
            }
            (Hostility::OversizedErrorBody, _, _) => {
                counters
                    .listings
                    .fetch_add(usize::from(listing), Ordering::Relaxed);
                let head = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n";
                let mut chunk = String::from(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>",
                );
                while chunk.len() < 64 * 1024 {
                    chunk.push_str("access denied, and denied again; ");
                }
                write_all(&mut writer, head.as_bytes())
                    && endless_chunks(
                        &mut writer,
                        chunk.as_bytes(),
                        chunk.as_bytes(),
                        counters,
                        stop,
                    )
            }
            (Hostility::OversizedBodies, _, true) => {
                counters.listings.fetch_add(1, Ordering::Relaxed);
                let prefix = query_param(&request.target, "prefix").unwrap_or("");
                write_all(&mut writer, &one_object_listing(prefix.is_empty()))
            }
            (Hostility::OversizedBodies, "HEAD", false) => {
                counters.heads.fetch_add(1, Ordering::Relaxed);
                let found = request
                    .target
                    .split('?')
                    .next()
                    .is_some_and(|path| path.ends_with(&format!("/{OBJECT_KEY}")));
                let answer = if found {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {OBJECT_SIZE}\r\nETag: \"e1\"\r\n\
                         Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                write_all(&mut writer, answer.as_bytes())
            }
            (Hostility::OversizedBodies, _, false) => {
                counters.gets.fetch_add(1, Ordering::Relaxed);
                let (start, end) = request.range.unwrap_or((0, OBJECT_SIZE - 1));
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{OBJECT_SIZE}\r\n\
                     ETag: \"e1\"\r\nLast-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\
                     Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                let chunk = vec![b'x'; 256 * 1024];
                write_all(&mut writer, head.as_bytes())
                    && endless_chunks(&mut writer, &chunk, &chunk, counters, stop)
            }
        };
        if !answered {
            return;
        }
    }
}

fn write_all(writer: &mut TcpStream, bytes: &[u8]) -> bool {
    writer.write_all(bytes).is_ok()
}

/// Sends `first`, then `chunk` again and again, as HTTP chunks, until the
/// peer stops reading (or [`MAX_BODY_SENT`], or the server stops); never
/// ends the body. Returns false (the connection is spent).
fn endless_chunks(
    writer: &mut TcpStream,
    first: &[u8],
    chunk: &[u8],
    counters: &Counters,
    stop: &AtomicBool,
) -> bool {
    let mut sent = 0u64;
    let mut next = first;
    while sent < MAX_BODY_SENT && !stop.load(Ordering::Relaxed) {
        let framed = [
            format!("{:x}\r\n", next.len()).as_bytes(),
            next,
            b"\r\n".as_slice(),
        ]
        .concat();
        if writer.write_all(&framed).is_err() {
            break;
        }
        sent += next.len() as u64;
        counters.largest_body.fetch_max(sent, Ordering::Relaxed);
        next = chunk;
    }
    false
}

/// A full listing page `page` that promises page `page + 1`.
fn endless_page(page: usize) -> Vec<u8> {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>endless</Name><IsTruncated>true</IsTruncated>",
    );
    for key in 0..KEYS_PER_PAGE {
        body.push_str(&format!(
            "<Contents><Key>k-{page:06}-{key:04}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents>"
        ));
    }
    body.push_str(&format!(
        "<NextContinuationToken>t{}</NextContinuationToken></ListBucketResult>",
        page + 1
    ));
    xml_response(&body)
}

/// The listing of the bucket's root (with the object) or of anything else (empty).
fn one_object_listing(root: bool) -> Vec<u8> {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>",
    );
    if root {
        body.push_str(&format!(
            "<Contents><Key>{OBJECT_KEY}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"e1\"</ETag><Size>{OBJECT_SIZE}</Size></Contents>"
        ));
    }
    body.push_str("</ListBucketResult>");
    xml_response(&body)
}

fn xml_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A TCP port that accepts connections and counts them, never answering.
pub struct CountingEndpoint {
    listener: TcpListener,
}

impl CountingEndpoint {
    /// On a free loopback port.
    pub fn start() -> CountingEndpoint {
        CountingEndpoint::bind("127.0.0.1:0".parse().unwrap())
    }

    /// On `addr` (e.g. a link-local address given to a private network's
    /// loopback).
    pub fn bind(addr: SocketAddr) -> CountingEndpoint {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind a counting endpoint {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        CountingEndpoint { listener }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }

    /// Connections accepted since the last call.
    pub fn connections(&self) -> usize {
        std::iter::from_fn(|| self.listener.accept().ok()).count()
    }
}

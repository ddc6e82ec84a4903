//! A small blocking HTTP/1.1 client for tests: one request per connection
//! (`Connection: close`) over the agent's unix socket or loopback TCP; reads
//! Content-Length, chunked and until-EOF bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Default bound on connect, send and receive of one request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `method path` with an optional JSON `body` over the unix socket `sock`;
/// returns the status and the body. Panics on a transport or protocol error.
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with_timeout(sock, method, path, body, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} over {}: {e}", sock.display()))
}

/// Like [`http`], but returns transport errors (e.g. the socket is not there yet).
pub fn http_with_timeout(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, "localhost", method, path, &[], body)
}

/// One request over loopback TCP, with extra `headers` (e.g. an admin bearer token).
pub fn http_tcp(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    http_on_tcp_stream(stream, addr, method, path, headers, body, timeout)
}

/// [`http_tcp`] on a stream already connected to `addr` (e.g. from a chosen
/// local address).
pub fn http_on_tcp_stream(
    stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, &addr.to_string(), method, path, headers, body)
}

fn exchange(
    mut stream: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if matches!(method, "PUT" | "POST" | "PATCH") {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    read_response(BufReader::new(stream))
}

fn protocol_error(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn read_response(mut reader: impl BufRead) -> std::io::Result<(u16, String)> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.trim().parse().ok())
        .ok_or_else(|| protocol_error(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(protocol_error("connection closed inside headers".into()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(protocol_error(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|e| protocol_error(format!("bad content-length {value:?}: {e}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        read_chunked(&mut reader)?
    } else if let Some(length) = content_length {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    let body = String::from_utf8(body)
        .map_err(|e| protocol_error(format!("response body is not utf-8: {e}")))?;
    Ok((status, body))
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_field = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_field, 16)
            .map_err(|e| protocol_error(format!("bad chunk size {size_line:?}: {e}")))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(protocol_error("chunk not followed by CRLF".into()));
        }
    }
}

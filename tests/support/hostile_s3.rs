//! A hostile S3 server for tests: every listing page is full and promises
//! another (a continuation token, forever). It answers on loopback from a
//! thread of its own, counts the listing requests, and stops on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Keys on each page it sends.
pub const KEYS_PER_PAGE: usize = 1000;

/// The server.
pub struct EndlessListing {
    addr: SocketAddr,
    pages: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EndlessListing {
    /// Starts it on a free loopback port.
    pub fn start() -> EndlessListing {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let pages = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pages, stop) = (Arc::clone(&pages), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let pages = Arc::clone(&pages);
                            std::thread::spawn(move || serve(stream, &pages));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        EndlessListing {
            addr,
            pages,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listing pages sent so far.
    pub fn pages_sent(&self) -> usize {
        self.pages.load(Ordering::Relaxed)
    }
}

impl Drop for EndlessListing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers the requests of one keep-alive connection.
fn serve(stream: std::net::TcpStream, pages: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone a stream"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers (requests carry no body).
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let page = pages.fetch_add(1, Ordering::Relaxed);
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
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

//! The attack tier's witness: while an attack runs, threads probe the
//! agent's `/healthz` over and over (on the unix socket, and on TCP where
//! the attack is on TCP) and record every probe's latency, so that a test
//! can assert the agent kept answering fast *during* the attack and that
//! enough probes were made for that assertion to mean something. Also the
//! agent's peak memory (`VmHWM`), to bound what an attack made it hold.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The latency every `/healthz` probe must stay under while an attack runs.
pub const HEALTHZ_BOUND: Duration = Duration::from_millis(100);
/// Pause between two probes of one target.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// Bound on one probe (a probe that takes this long is a failure, not a hang).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a probe thread asks.
#[derive(Clone)]
enum Target {
    Socket(PathBuf),
    /// The agent's TCP address, the address the probe connects from (the
    /// listener limits connections per peer address: the probe must not be
    /// the attacker's peer) and the bearer token.
    Tcp(SocketAddr, std::net::Ipv4Addr, String),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Socket(_) => "socket".to_string(),
            Target::Tcp(addr, _, _) => format!("tcp {addr}"),
        }
    }

    fn probe(&self) -> Result<u16, String> {
        match self {
            Target::Socket(path) => {
                super::http_with_timeout(path, "GET", "/healthz", None, PROBE_TIMEOUT)
                    .map(|(status, _)| status)
                    .map_err(|e| e.to_string())
            }
            Target::Tcp(addr, from, token) => {
                let stream = connect_from(*from, *addr).map_err(|e| format!("connect: {e}"))?;
                let auth = format!("Bearer {token}");
                super::http::http_on_tcp_stream(
                    stream,
                    *addr,
                    "GET",
                    "/healthz",
                    &[("Authorization", &auth)],
                    None,
                    PROBE_TIMEOUT,
                )
                .map(|(status, _)| status)
                .map_err(|e| e.to_string())
            }
        }
    }
}

/// Connects to the IPv4 `addr` from the local address `from` (any port).
fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let SocketAddr::V4(addr) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: socket(2) takes plain integers and returns a new fd or -1.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(from, 0);
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes that outlives the call.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) })?;
    let remote = sockaddr(*addr.ip(), addr.port());
    // SAFETY: as above, for `remote`.
    check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len) })?;
    Ok(TcpStream::from(fd))
}

/// What the probes of one target saw.
#[derive(Debug, Clone)]
pub struct ProbeStats {
    /// `socket` or `tcp ADDR`.
    pub target: String,
    /// Probes answered or failed while the attack ran.
    pub probes: usize,
    /// The slowest of them.
    pub worst: Duration,
    /// Probes that did not answer 200 (what happened instead).
    pub failures: Vec<String>,
}

/// Probing threads, from [`HealthProbe::start`] to [`HealthProbe::finish`].
pub struct HealthProbe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ProbeStats>>,
    started: Instant,
}

impl HealthProbe {
    /// Starts probing `/healthz` on the unix socket `socket`. Call it from
    /// the test thread once the node runs (the thread's namespaces are
    /// inherited: the socket path and the loopback are the node's).
    pub fn start(socket: &Path) -> HealthProbe {
        let mut probe = HealthProbe {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            started: Instant::now(),
        };
        probe.spawn(Target::Socket(socket.to_path_buf()));
        probe
    }

    /// Also probes the TCP API at `addr` with `token`, connecting from
    /// `127.0.0.2` (another peer than attackers on `127.0.0.1`).
    pub fn and_tcp(mut self, addr: SocketAddr, token: &str) -> HealthProbe {
        let from = std::net::Ipv4Addr::new(127, 0, 0, 2);
        self.spawn(Target::Tcp(addr, from, token.to_string()));
        self
    }

    fn spawn(&mut self, target: Target) {
        let stop = Arc::clone(&self.stop);
        self.threads.push(std::thread::spawn(move || {
            let mut stats = ProbeStats {
                target: target.label(),
                probes: 0,
                worst: Duration::ZERO,
                failures: Vec::new(),
            };
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answer = target.probe();
                let took = asked.elapsed();
                stats.probes += 1;
                stats.worst = stats.worst.max(took);
                match answer {
                    Ok(200) => {}
                    Ok(status) => stats.failures.push(format!("{status} after {took:?}")),
                    Err(e) => stats.failures.push(format!("{e} after {took:?}")),
                }
                std::thread::sleep(PROBE_PAUSE);
            }
            stats
        }));
    }

    /// Stops the probes and returns what they saw.
    pub fn finish(mut self) -> HealthReport {
        self.stop.store(true, Ordering::Relaxed);
        let lasted = self.started.elapsed();
        let targets = self
            .threads
            .drain(..)
            .map(|thread| thread.join().expect("a /healthz probe thread panicked"))
            .collect();
        HealthReport { targets, lasted }
    }
}

impl Drop for HealthProbe {
    fn drop(&mut self) {
        // A test that panicked before finish(): stop the threads anyway.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the probes saw during one attack.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// Per target.
    pub targets: Vec<ProbeStats>,
    /// How long the probing lasted.
    pub lasted: Duration,
}

impl HealthReport {
    /// The slowest probe of any target.
    pub fn worst(&self) -> Duration {
        self.targets
            .iter()
            .map(|t| t.worst)
            .max()
            .unwrap_or_default()
    }

    /// Asserts that every target answered every probe with 200, in under
    /// [`HEALTHZ_BOUND`], and was probed at least `min_probes` times (so
    /// the bound was really tested during the attack); prints the figures.
    pub fn assert_healthy(&self, attack: &str, min_probes: usize) {
        let problems = self.problems(attack, min_probes);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// What [`HealthReport::assert_healthy`] would complain about (for a
    /// test that reports it together with other findings); prints the
    /// figures.
    pub fn problems(&self, attack: &str, min_probes: usize) -> Vec<String> {
        let mut problems = Vec::new();
        for target in &self.targets {
            eprintln!(
                "figure: {attack}: /healthz on {} answered {} probes in {:?}, worst {:?}",
                target.target, target.probes, self.lasted, target.worst
            );
            if !target.failures.is_empty() {
                problems.push(format!(
                    "{attack}: /healthz on {} failed {} of {} probes: {:?}",
                    target.target,
                    target.failures.len(),
                    target.probes,
                    &target.failures[..target.failures.len().min(5)]
                ));
            }
            if target.probes < min_probes {
                problems.push(format!(
                    "{attack}: only {} /healthz probes on {} during the attack ({:?}); at least {min_probes} wanted",
                    target.probes, target.target, self.lasted
                ));
            }
            if target.worst >= HEALTHZ_BOUND {
                problems.push(format!(
                    "{attack}: /healthz on {} took {:?} under attack (bound {HEALTHZ_BOUND:?})",
                    target.target, target.worst
                ));
            }
        }
        problems
    }
}

/// The peak resident memory of `pid` so far (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    super::status_field(pid, "VmHWM:")
}

/// Runs `attack` again and again until it has run for at least `at_least`
/// (an attacker does not stop after one try, and the probes need time);
/// returns how many rounds ran.
pub fn repeat_for(at_least: Duration, mut attack: impl FnMut(usize)) -> usize {
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < at_least {
        attack(rounds);
        rounds += 1;
    }
    rounds
}

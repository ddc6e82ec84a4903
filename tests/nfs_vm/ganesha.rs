//! nfs-ganesha on 127.0.0.1 for the nfs tier: NFSv4 only (no rpcbind), one
//! read-write export of a temporary directory as `/data`, run in the foreground
//! as a child of the test and stopped by pid (on Drop too, and by the kernel
//! through PR_SET_PDEATHSIG if the test process dies).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{spawn_owned, stop_child};

/// The pseudo path the export is mounted by (`10.0.2.2:/data` from the guest).
pub const PSEUDO: &str = "/data";

/// A running (or stopped, restartable) nfs-ganesha.
pub struct Ganesha {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Ganesha {
    /// Starts ganesha on a free port of 127.0.0.1, exporting an empty directory.
    pub fn start() -> Ganesha {
        let dir = tempfile::Builder::new()
            .prefix("hotmount-ganesha-")
            .tempdir()
            .expect("create ganesha temp dir");
        for sub in ["export", "recovery"] {
            std::fs::create_dir(dir.path().join(sub)).expect("create ganesha dirs");
        }
        let mut ganesha = Ganesha {
            dir,
            port: crate::support::free_loopback_ports::<1>()[0],
            child: None,
        };
        ganesha.start_again();
        ganesha
    }

    /// The exported directory on the host.
    pub fn export_dir(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// The NFS port on 127.0.0.1 (the guest reaches it at 10.0.2.2).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default()
    }

    /// (Re)starts the server on the same port and waits until it accepts.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "ganesha is already running");
        let conf = self.dir.path().join("ganesha.conf");
        std::fs::write(
            &conf,
            config(
                &self.export_dir(),
                &self.dir.path().join("recovery"),
                self.port,
            ),
        )
        .expect("write ganesha.conf");
        let log = self.dir.path().join("ganesha.log");
        let mut command = Command::new("ganesha.nfsd");
        command
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(self.dir.path().join("ganesha.pid"))
            .args(["-N", "NIV_WARN"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_owned(&mut command, "ganesha.nfsd");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "ganesha.nfsd exited with {status} at start; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "ganesha.nfsd not listening on {addr} after 20s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(5));
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The recipe's NFSv4-only configuration (`shared/recipes/nfs-ganesha.md`),
/// with the port, export and recovery directory of this instance. Graceless:
/// no 90 s grace period after a restart, so a restarted server serves at once.
fn config(export: &Path, recovery: &Path, port: u16) -> String {
    format!(
        r#"NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1;
                 Enable_NLM = false; Enable_RQUOTA = false; }}
NFSv4 {{ Graceless = true; RecoveryRoot = "{recovery}"; }}
EXPORT {{ Export_Id = 1; Path = "{export}"; Pseudo = {PSEUDO}; Access_Type = RW;
         Squash = No_Root_Squash; SecType = sys; Protocols = 4; Transports = TCP;
         FSAL {{ Name = VFS; }} }}
LOG {{ Default_Log_Level = WARN; }}
"#,
        recovery = recovery.display(),
        export = export.display(),
    )
}

//! `promtool check metrics`: Prometheus' own linter for the text exposition format.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on one promtool run.
pub const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Panics with promtool's findings unless `text` passes `promtool check metrics`
/// (which also fails on lint problems: naming, units, missing HELP).
pub fn promtool_check_metrics(text: &str) {
    if let Err(findings) = promtool_check(text) {
        panic!(
            "promtool check metrics rejected the exposition:\n{findings}\n---- exposition ----\n{text}"
        );
    }
}

/// Runs `promtool check metrics` on `text`: `Err(output)` if it does not pass.
pub fn promtool_check(text: &str) -> Result<(), String> {
    super::require_tool("promtool", "prometheus");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(PROMTOOL_TIMEOUT) {
        Ok(output) => output.unwrap_or_else(|e| panic!("wait for promtool: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("promtool check metrics did not finish within {PROMTOOL_TIMEOUT:?}");
        }
    };
    let _ = writer.join();
    let _ = waiter.join();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

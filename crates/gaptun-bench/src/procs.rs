//! Running external commands: one-shot commands with a time limit, long-running children that
//! are stopped by PID when dropped, and a registry so Ctrl-C can stop them and remove the
//! namespaces before the harness exits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext, Result};

/// PIDs of children still running, and namespaces still existing, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set once Ctrl-C was pressed, so long loops stop early.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once the user asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`BenchError::Interrupted`] once the user asked to stop.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers a namespace so the Ctrl-C handler removes it.
pub fn register_namespace(name: &str) {
    lock(&NAMESPACES).push(name.to_string());
}

/// Forgets a namespace that was removed normally.
pub fn unregister_namespace(name: &str) {
    lock(&NAMESPACES).retain(|n| n != name);
}

/// Installs the Ctrl-C / SIGTERM handler: stop our children by PID, delete our namespaces, exit.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: stopping children and removing namespaces");
        for pid in lock(&CHILDREN).drain(..) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for ns in lock(&NAMESPACES).drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        std::process::exit(130);
    })
    .map_err(|e| BenchError::Invalid(format!("cannot install Ctrl-C handler: {e}")))
}

/// Renders a command line for messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion within `limit`, capturing output; fails on non-zero exit.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let out = run_unchecked(cmd, limit)?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 400),
        });
    }
    Ok(out)
}

/// Runs `cmd` within `limit`, capturing output, whatever its exit status.
pub fn run_unchecked(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let what = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(format!("spawn {what}"))?;
    let pid = child.id();
    lock(&CHILDREN).push(pid);
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if done.load(Ordering::SeqCst) {
                    return false;
                }
                thread::sleep(Duration::from_millis(50));
            }
            if done.load(Ordering::SeqCst) {
                return false;
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            true
        })
    };
    let out = child.wait_with_output();
    done.store(true, Ordering::SeqCst);
    lock(&CHILDREN).retain(|p| *p != pid);
    let timed_out = watchdog.join().unwrap_or(false);
    if timed_out {
        return Err(BenchError::Timeout(what));
    }
    out.ctx(format!("wait for {what}"))
}

/// The last `max` characters of `s`, for error messages.
pub fn tail(s: &str, max: usize) -> String {
    let t = s.trim();
    let start = t.len().saturating_sub(max);
    let start = (start..t.len())
        .find(|i| t.is_char_boundary(*i))
        .unwrap_or(t.len());
    t[start..].to_string()
}

/// A long-running child process (server, tunnel endpoint) stopped by PID when dropped.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Managed {
    /// Spawns `cmd` with output going to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = File::create(log).ctx(format!("create {}", log.display()))?;
        let err = out.try_clone().ctx("clone log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .ctx(format!("spawn {}", describe(cmd)))?;
        lock(&CHILDREN).push(child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its PID (the program itself: `ip netns exec` execs without forking).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited, quoting its log.
    pub fn ensure_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status)),
            Err(e) => Err(BenchError::Io {
                context: format!("wait for {}", self.name),
                source: e,
            }),
        }
    }

    fn exited(&self, status: ExitStatus) -> BenchError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        BenchError::Command {
            command: self.name.clone(),
            status: status.to_string(),
            stderr: tail(&log, 400),
        }
    }

    /// Stops the process by PID and reaps it.
    pub fn stop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        lock(&CHILDREN).retain(|p| *p != pid);
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Child processes: spawning with the log and pid files, signalling the process group,
//! and cleaning up after a previous runner.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::launch::Launch;

/// Spawns `launch` in `pod_dir`, appending stdout and stderr to `<pod_dir>/<container>.log`.
/// The child leads a process group of its own (so signals reach what it forks) and dies
/// with the runner (PR_SET_PDEATHSIG: the runner uses a current-thread runtime, so the
/// spawning thread is the main thread and lives as long as the runner).
pub fn spawn(launch: &Launch, pod_dir: &Path, container: &str) -> std::io::Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod_dir.join(format!("{container}.log")))?;
    writeln!(
        log,
        "--- pod-runner: starting {} {:?}",
        launch.binary.display(),
        launch.args
    )?;
    let mut cmd = Command::new(&launch.binary);
    cmd.args(&launch.args)
        .env_clear()
        .current_dir(pod_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for name in ["PATH", "HOME", "RUST_LOG"] {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the runner died before prctl took effect
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        std::fs::write(pid_file(pod_dir, container), pid.to_string())?;
    }
    Ok(child)
}

pub fn pid_file(pod_dir: &Path, container: &str) -> std::path::PathBuf {
    pod_dir.join(format!("{container}.pid"))
}

/// Signals the child's process group (it leads one).
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall; a stale pid group fails with ESRCH.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// SIGTERM to every child, up to `grace` for them to exit, then SIGKILL; reaps them all.
pub async fn terminate(children: &mut [&mut Child], grace: Duration) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            signal(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let mut alive = false;
        for child in children.iter_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                alive = true;
            }
        }
        if !alive || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            if let Some(pid) = child.id() {
                tracing::info!(pid, "still running after the grace period; SIGKILL");
                signal(pid, libc::SIGKILL);
            }
            let _ = child.kill().await;
        }
        let _ = child.wait().await;
    }
}

/// Kills processes a previous runner left behind: a pid file in a pod directory whose
/// process still has that directory as its working directory.
pub fn kill_stale(pods_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "pid") {
                continue;
            }
            let pid: Option<u32> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = pid {
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
                let ours = cwd.is_some_and(|c| std::fs::canonicalize(&dir).is_ok_and(|d| d == c));
                if ours {
                    tracing::info!(pid, dir = %dir.display(), "killing a process left by a previous runner");
                    signal(pid, libc::SIGKILL);
                    // SAFETY: plain syscall.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

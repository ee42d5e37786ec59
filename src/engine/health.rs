//! Health checks (docs/compose.md, "Health checks"): docker's `healthcheck:`, run in the guest
//! over the project's SSH login with the system `ssh` client.
//!
//! There is no daemon: a check runs while a command waits (`up` before starting a VM that
//! needs a dependency healthy, `up --wait`, and `ps`/`inspect` for a VM that answers SSH), and
//! its results are kept in the VM's private folder, tied to the QEMU run they were taken in,
//! so a later command goes on from them.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::compose::{HealthCheck, HealthTest, Project, Vm};
use crate::state::{InstancePaths, InstanceRecord, StateDir, atomic};

use crate::qemu::process::{self, ProcState};

use super::workspace::instance_paths;
use super::{EngineError, HostEnv, Reporter, ssh, status};

/// How long `up` waits for a dependency to become healthy when the command does not say.
pub const DEFAULT_HEALTH_WAIT: Duration = Duration::from_secs(300);
/// Results kept, as docker keeps them.
const KEPT_RESULTS: usize = 5;
/// Output kept per result, as docker keeps it.
const KEPT_OUTPUT: u64 = 4096;

/// What the checks of one QEMU run found so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The QEMU run these results belong to (the instance record's `started`).
    started: String,
    pub status: HealthStatus,
    /// Failures in a row that counted (after the start period).
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: Vec<HealthResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

/// One run of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// RFC 3339, when the check started and ended.
    pub start: String,
    pub end: String,
    /// The command's exit status; -1 when it was stopped at the timeout.
    pub exit_code: i32,
    /// What it printed (stdout and stderr together), at most 4 KiB.
    pub output: String,
}

impl Health {
    fn new(record: &InstanceRecord) -> Self {
        Health {
            started: record.started.clone(),
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    /// The last result, in words for an error message.
    pub fn last_words(&self) -> String {
        match self.log.last() {
            Some(r) if r.output.trim().is_empty() => format!("last check exited {}", r.exit_code),
            Some(r) => format!("last check exited {}: {}", r.exit_code, r.output.trim_end()),
            None => "no check has run yet".to_owned(),
        }
    }

    /// Whether the next check is due at `now`: none ran yet, or the interval (the start
    /// interval while the VM is starting within its start period) has passed since the last.
    fn due(&self, check: &HealthCheck, qemu_started: SystemTime, now: SystemTime) -> bool {
        let Some(last) = self.log.last() else {
            return true;
        };
        let Ok(last_end) = humantime::parse_rfc3339_weak(&last.end) else {
            return true;
        };
        let interval =
            if self.status == HealthStatus::Starting && in_start_period(check, qemu_started, now) {
                check.start_interval_ms
            } else {
                check.interval_ms
            };
        now.duration_since(last_end)
            .is_ok_and(|d| d >= Duration::from_millis(interval))
    }

    /// Takes in a result by docker's rules: a success makes the VM healthy; a failure within
    /// the start period does not count; `retries` failures in a row make it unhealthy.
    fn add(&mut self, check: &HealthCheck, result: HealthResult, qemu_started: SystemTime) {
        let counts = !in_start_period(check, qemu_started, SystemTime::now());
        if result.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if counts {
            self.failing_streak += 1;
            if self.failing_streak >= check.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(result);
        if self.log.len() > KEPT_RESULTS {
            self.log.remove(0);
        }
    }
}

fn in_start_period(check: &HealthCheck, qemu_started: SystemTime, now: SystemTime) -> bool {
    now.duration_since(qemu_started)
        .is_ok_and(|d| d < Duration::from_millis(check.start_period_ms))
}

fn health_file(paths: &InstancePaths) -> PathBuf {
    paths.private_dir.join("health.json")
}

/// The results so far of the QEMU run `record` describes.
pub fn load(paths: &InstancePaths, record: &InstanceRecord) -> Health {
    atomic::read_optional(&health_file(paths))
        .ok()
        .flatten()
        .and_then(|text| serde_json::from_str::<Health>(&text).ok())
        .filter(|h| h.started == record.started)
        .unwrap_or_else(|| Health::new(record))
}

/// The health of a running VM, after running its check when one is due.
pub fn refresh(
    check: &HealthCheck,
    login: &ssh::Login,
    paths: &InstancePaths,
    record: &InstanceRecord,
) -> Health {
    let mut health = load(paths, record);
    let qemu_started =
        humantime::parse_rfc3339_weak(&record.started).unwrap_or(SystemTime::UNIX_EPOCH);
    if health.due(check, qemu_started, SystemTime::now()) {
        health.add(check, run(check, login), qemu_started);
        // Best effort: without the file the next command starts the count again.
        if let Ok(json) = serde_json::to_vec_pretty(&health) {
            let _ = atomic::write_atomic(&health_file(paths), &json, 0o600);
        }
    }
    health
}

/// Runs the check once over SSH, stopping it at its timeout.
fn run(check: &HealthCheck, login: &ssh::Login) -> HealthResult {
    let start = now_text();
    let (exit_code, output) = match run_ssh(check, login) {
        Ok(done) => done,
        Err(e) => (-1, format!("cannot run ssh: {e}")),
    };
    HealthResult {
        start,
        end: now_text(),
        exit_code,
        output,
    }
}

fn run_ssh(check: &HealthCheck, login: &ssh::Login) -> std::io::Result<(i32, String)> {
    let timeout = Duration::from_millis(check.timeout_ms);
    // One line for the remote shell: CMD's words each one argument, as docker runs them;
    // CMD-SHELL's line as the shell reads it.
    let line = match &check.test {
        HealthTest::Cmd(words) => ssh::quoted_line(words),
        HealthTest::CmdShell(line) => line.clone(),
    };
    // stdout and stderr into one file, in the order they come, without a pipe to drain.
    let mut out = tempfile::tempfile()?;
    let mut child = ssh::batch_command(login, timeout, &[line])
        .stdout(out.try_clone()?)
        .stderr(out.try_clone()?)
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let exit_code = loop {
        if let Some(status) = child.try_wait()? {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut bytes = Vec::new();
    out.rewind()?;
    Read::by_ref(&mut out)
        .take(KEPT_OUTPUT)
        .read_to_end(&mut bytes)?;
    let mut output = String::from_utf8_lossy(&bytes).into_owned();
    if timed_out {
        output.push_str(&format!(
            "\n(health check timed out after {} ms)",
            check.timeout_ms
        ));
    }
    Ok((exit_code, output))
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a VM's health check needs to log in.
#[derive(Debug, Clone, Copy)]
struct Probe<'a> {
    vm: &'a Vm,
    check: &'a HealthCheck,
    key: &'a Path,
    paths: &'a InstancePaths,
}

impl Probe<'_> {
    /// Runs the check whenever it is due until the VM is healthy; fails naming the VM and
    /// the last check's output when it is unhealthy, stops running, or `deadline` passes.
    fn wait_healthy(&self, deadline: Instant, reporter: &dyn Reporter) -> Result<(), EngineError> {
        let mut said = false;
        loop {
            let running = matches!(
                process::state(&status::handle(self.paths)),
                ProcState::Running { .. }
            );
            let Some(record) = InstanceRecord::load(&self.paths.record)?.filter(|_| running) else {
                return Err(EngineError::vm(
                    &self.vm.name,
                    "is not running, so it cannot become healthy",
                ));
            };
            let login = ssh::Login {
                key: self.key,
                user: &self.vm.user,
                port: record.ssh_port,
                vm: &self.vm.name,
                known_hosts: &self.paths.known_hosts,
            };
            let health = refresh(self.check, &login, self.paths, &record);
            match health.status {
                HealthStatus::Healthy => {
                    reporter.info(&format!("VM {} is healthy", self.vm.name));
                    return Ok(());
                }
                HealthStatus::Unhealthy => {
                    return Err(EngineError::vm(
                        &self.vm.name,
                        format!("is unhealthy; {}", health.last_words()),
                    ));
                }
                HealthStatus::Starting => {}
            }
            if Instant::now() >= deadline {
                return Err(EngineError::vm(
                    &self.vm.name,
                    format!("did not become healthy in time; {}", health.last_words()),
                ));
            }
            if !said {
                reporter.info(&format!("waiting for VM {} to be healthy", self.vm.name));
                said = true;
            }
            std::thread::sleep(
                Duration::from_millis(200).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }
}

/// `up --wait` for one VM: waits until it is healthy when it has a check (and says whether
/// it has one: without, the caller waits for SSH).
pub fn wait_if_checked(
    vm: &Vm,
    key: &Path,
    paths: &InstancePaths,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<bool, EngineError> {
    let Some(check) = &vm.healthcheck else {
        return Ok(false);
    };
    let probe = Probe {
        vm,
        check,
        key,
        paths,
    };
    probe.wait_healthy(deadline, reporter)?;
    Ok(true)
}

/// Waits until every VM that `vm` depends on with `condition: service_healthy` is healthy,
/// running their checks meanwhile (`up`, before it starts `vm`), for at most `limit`
/// ([`DEFAULT_HEALTH_WAIT`] when `None`).
pub fn wait_for_dependencies(
    project: &Project,
    host: &HostEnv,
    vm: &Vm,
    key: &Path,
    limit: Option<Duration>,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let deadline = Instant::now() + limit.unwrap_or(DEFAULT_HEALTH_WAIT);
    let state = StateDir::new(&project.dir);
    for dep in vm.healthy_dependencies.iter().filter_map(|d| project.vm(d)) {
        // Validation refuses service_healthy on a VM without a check.
        let Some(check) = &dep.healthcheck else {
            continue;
        };
        reporter.info(&format!(
            "VM {} waits for VM {} to be healthy",
            vm.name, dep.name
        ));
        let paths = instance_paths(&state, host, &dep.name);
        Probe {
            vm: dep,
            check,
            key,
            paths: &paths,
        }
        .wait_healthy(deadline, reporter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            test: HealthTest::CmdShell("true".into()),
            interval_ms: 30_000,
            timeout_ms: 1_000,
            retries,
            start_period_ms,
            start_interval_ms: 5_000,
        }
    }

    fn result(exit_code: i32, end: SystemTime) -> HealthResult {
        let end = humantime::format_rfc3339_millis(end).to_string();
        HealthResult {
            start: end.clone(),
            end,
            exit_code,
            output: format!("exit {exit_code}"),
        }
    }

    fn fresh() -> Health {
        Health {
            started: "2026-01-01T00:00:00Z".into(),
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    #[test]
    fn docker_rules_for_status_and_streak() {
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let c = check(2, 0);
        let mut h = fresh();
        h.add(&c, result(1, SystemTime::now()), long_ago);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        h.add(&c, result(0, SystemTime::now()), long_ago);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        // One failure after a pass leaves it healthy; `retries` in a row do not.
        h.add(&c, result(1, SystemTime::now()), long_ago);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 1));
        h.add(&c, result(1, SystemTime::now()), long_ago);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 2));
        assert_eq!(h.last_words(), "last check exited 1: exit 1");
        for _ in 0..10 {
            h.add(&c, result(1, SystemTime::now()), long_ago);
        }
        assert_eq!(h.log.len(), KEPT_RESULTS);

        // Within the start period failures do not count.
        let mut h = fresh();
        h.add(
            &check(1, 60_000),
            result(1, SystemTime::now()),
            SystemTime::now(),
        );
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        assert_eq!(fresh().last_words(), "no check has run yet");
    }

    #[test]
    fn a_check_is_due_after_its_interval() {
        let now = SystemTime::now();
        let long_ago = now - Duration::from_secs(3600);
        let c = check(3, 0);
        let mut h = fresh();
        assert!(h.due(&c, long_ago, now));
        h.add(&c, result(1, now - Duration::from_secs(10)), long_ago);
        assert!(!h.due(&c, long_ago, now));
        assert!(h.due(&c, long_ago, now + Duration::from_secs(21)));
        // In the start period, while starting: the start interval (5 s, not 30 s).
        let in_start = check(3, 600_000);
        let started = now - Duration::from_secs(20);
        assert!(h.due(&in_start, started, now));
        assert!(!h.due(&c, started, now));
        assert!(!h.due(&in_start, started, now - Duration::from_secs(6)));
    }
}

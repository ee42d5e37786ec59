//! The `ssh` client command line for a VM, and the readiness probe built on it.
//!
//! QEMU's forwarded port accepts TCP as soon as QEMU runs, long before the guest's sshd
//! exists, so a connect (or even a banner) proves nothing. A VM is *ready* when a real SSH
//! login with the project key works and cloud-init has finished: before that, cloud-init may
//! still restart sshd (it does to apply `ssh_pwauth`), and a login right after `up --wait`
//! would be refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The options every qemu-compose ssh invocation uses. Host keys are not recorded: each
/// instance makes new ones, and the port is on the loopback interface.
fn base_args(key: &Path, user: &str, port: u16) -> Vec<String> {
    [
        "-i",
        &key.to_string_lossy(),
        "-p",
        &port.to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-l",
        user,
        "127.0.0.1",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// The arguments (after `ssh`) that log into the VM and run `command`. ssh joins its words
/// with spaces for the remote shell, which would split `'a b'` in two; so, as
/// `docker compose exec` keeps argument boundaries, several words are each quoted for a POSIX
/// shell. A single word is passed as it is and run by the remote shell, so
/// `qemu-compose ssh db 'ps | grep x'` still works.
pub fn args(key: &Path, user: &str, port: u16, command: &[String]) -> Vec<String> {
    let mut args = base_args(key, user, port);
    if !command.is_empty() {
        // ssh reads options again after the host; `--` makes the rest the remote command,
        // even words that start with '-'.
        args.push("--".to_string());
        match command {
            [one] => args.push(one.clone()),
            words => args.push(
                words
                    .iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
    }
    args
}

/// `word` as one word for a POSIX shell: in single quotes, each `'` written as `'\''`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The file cloud-init writes when its last stage is done.
const BOOT_FINISHED: &str = "/var/lib/cloud/instance/boot-finished";

/// Whether an SSH login with the project key succeeds within `timeout` and finds cloud-init
/// finished.
pub fn probe(key: &Path, user: &str, port: u16, timeout: Duration) -> bool {
    let secs = timeout.as_secs().max(1).to_string();
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o"])
        .arg(format!("ConnectTimeout={secs}"))
        .args(args(
            key,
            user,
            port,
            &[
                "test".to_string(),
                "-e".to_string(),
                BOOT_FINISHED.to_string(),
            ],
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_command_follows_the_host_after_a_double_dash() {
        let a = args(Path::new("/k"), "deb", 2222, &["ls".into(), "-la".into()]);
        let tail: Vec<_> = a.iter().rev().take(3).rev().cloned().collect();
        assert_eq!(tail, ["127.0.0.1", "--", "'ls' '-la'"]);
        assert!(a.windows(2).any(|w| w == ["-l", "deb"]));
        assert!(a.windows(2).any(|w| w == ["-p", "2222"]));
        let login = args(Path::new("/k"), "deb", 2222, &[]);
        assert_eq!(login.last().map(String::as_str), Some("127.0.0.1"));
    }

    /// What the remote shell makes of the command ssh sends: run it through `sh -c`.
    fn remote_output(command: &[&str]) -> String {
        let words: Vec<String> = command.iter().map(ToString::to_string).collect();
        let a = args(Path::new("/k"), "deb", 2222, &words);
        let remote = a.last().unwrap();
        let out = Command::new("sh").arg("-c").arg(remote).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn several_words_keep_their_boundaries_in_the_remote_shell() {
        assert_eq!(remote_output(&["printf", "%s|", "a b", "c"]), "a b|c|");
        assert_eq!(
            remote_output(&["printf", "%s|", "it's", "$HOME", "`id`", "a\\b"]),
            "it's|$HOME|`id`|a\\b|"
        );
        // One word is a command line for the remote shell, as with plain ssh.
        assert_eq!(remote_output(&["printf x | tr x y"]), "y");
    }
}

//! The `ssh` client command line for a VM, and the readiness probe built on it.
//!
//! QEMU's forwarded port accepts TCP as soon as QEMU runs, long before the guest's sshd
//! exists, so a connect (or even a banner) proves nothing. A VM is *ready* when a real SSH
//! login with the project key works and cloud-init has finished: before that, cloud-init may
//! still restart sshd (it does to apply `ssh_pwauth`), and a login right after `up --wait`
//! would be refused.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What logging into one VM takes.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The project's private key.
    pub key: &'a Path,
    /// The guest user.
    pub user: &'a str,
    /// The forwarded port on 127.0.0.1.
    pub port: u16,
    /// The VM, whose pinned host key ssh must see.
    pub vm: &'a str,
    /// The instance's known_hosts file ([`crate::state::InstancePaths::known_hosts`]).
    pub known_hosts: &'a Path,
}

/// The name the instance's known_hosts file gives its host key (`HostKeyAlias`), so that
/// the key is checked whatever port the VM was given this time.
pub fn host_alias(vm: &str) -> String {
    format!("qemu-compose-{}", crate::cloudinit::hostname_for_vm(vm))
}

/// The options every qemu-compose ssh invocation uses. The host key is the instance's own,
/// made on the host and pinned (`StrictHostKeyChecking=yes`): whatever else answers on the
/// port (a process that took it after the VM stopped) is refused before it sees a command.
/// The user's own and the system's known_hosts files are left alone.
fn base_args(login: &Login) -> Vec<String> {
    let mut args = vec![
        "-i".to_string(),
        escape_tokens(login.key),
        "-p".to_string(),
        login.port.to_string(),
    ];
    for option in [
        "IdentitiesOnly=yes".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        format!("UserKnownHostsFile={}", config_path(login.known_hosts)),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        format!("HostKeyAlias={}", host_alias(login.vm)),
        "HostKeyAlgorithms=ssh-ed25519".to_string(),
        "UpdateHostKeys=no".to_string(),
        "LogLevel=ERROR".to_string(),
    ] {
        args.push("-o".to_string());
        args.push(option);
    }
    args.extend(["-l".to_string(), login.user.to_string()]);
    args
}

/// The ssh options that take a value (ssh(1)): `-L 8080:localhost:80`, `-o Key=value`, ...
const OPTIONS_WITH_VALUE: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// The user's words after the VM name, split into options for ssh and the remote command.
///
/// Leading words that start with `-` are ssh options (with the value the option takes); the
/// command is what follows `--`, or everything from the first word that is not an option.
/// `after_dashes` is what came after a `--` that the argument parser took away already.
pub fn split_words(
    words: &[String],
    after_dashes: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut options = Vec::new();
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        if word == "--" {
            break;
        }
        let Some(letters) = word.strip_prefix('-').filter(|l| !l.is_empty()) else {
            let mut command = vec![word.clone()];
            command.extend(rest.cloned());
            command.extend(after_dashes.iter().cloned());
            return Ok((options, command));
        };
        options.push(word.clone());
        // `-vL`: the last letter may take the next word as its value; `-L8080:…` has it.
        let takes_value = letters
            .char_indices()
            .find(|(_, c)| OPTIONS_WITH_VALUE.contains(*c))
            .is_some_and(|(at, c)| at + c.len_utf8() == letters.len());
        if takes_value {
            let value = rest
                .next()
                .ok_or_else(|| format!("the ssh option {word} needs a value"))?;
            options.push(value.clone());
        }
    }
    let mut command: Vec<String> = rest.cloned().collect();
    command.extend(after_dashes.iter().cloned());
    Ok((options, command))
}

/// `path` as ssh reads a file name: `%` starts a token (`%%` is a `%`).
fn escape_tokens(path: &Path) -> String {
    path.to_string_lossy().replace('%', "%%")
}

/// `path` as an `-o` option value: as [`escape_tokens`], and in double quotes, since ssh's
/// option parser splits the known_hosts value on whitespace.
fn config_path(path: &Path) -> String {
    format!("\"{}\"", escape_tokens(path))
}

/// The arguments (after `ssh`) that log into the VM with the user's extra `options` and run
/// `command`. ssh joins its words
/// with spaces for the remote shell, which would split `'a b'` in two; so, as
/// `docker compose exec` keeps argument boundaries, several words are each quoted for a POSIX
/// shell. A single word is passed as it is and run by the remote shell, so
/// `qemu-compose ssh db 'ps | grep x'` still works.
pub fn args(login: &Login, options: &[String], command: &[String]) -> Vec<String> {
    let mut args = base_args(login);
    // After ours: for options given twice, ssh keeps the first, so the pinning stays.
    args.extend(options.iter().cloned());
    args.push("127.0.0.1".to_string());
    if !command.is_empty() {
        // ssh reads options again after the host; `--` makes the rest the remote command,
        // even words that start with '-'.
        args.push("--".to_string());
        match command {
            [one] => args.push(one.clone()),
            words => args.push(quoted_line(words)),
        }
    }
    args
}

/// `word` as one word for a POSIX shell: in single quotes, each `'` written as `'\''`; or
/// bare when `bare_if_plain` and it holds only characters no shell treats specially. Bare
/// words are for people to read: a bare first word could still be a keyword (`if`) or an
/// assignment (`A=b`), so a command that is run is always quoted.
fn shell_quote(word: &str, bare_if_plain: bool) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
    if bare_if_plain && plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// `words` joined by spaces, each quoted by [`shell_quote`].
fn shell_line(words: &[String], bare_if_plain: bool) -> String {
    words
        .iter()
        .map(|w| shell_quote(w, bare_if_plain))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether an SSH server's banner (`SSH-…`) arrives on the forwarded port within `budget`.
///
/// QEMU accepts the connection itself while the guest boots and holds it until the guest
/// answers; a guest without sshd yet resets it. Either way no banner comes, and this says
/// so in `budget` instead of the client's connect timeout.
pub fn banner_seen(port: u16, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, budget) else {
        return false;
    };
    let mut banner = [0u8; 4];
    let mut got = 0;
    while got < banner.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut banner[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    &banner == b"SSH-"
}

/// The file cloud-init writes when its last stage is done.
const BOOT_FINISHED: &str = "/var/lib/cloud/instance/boot-finished";

/// Whether an SSH login with the project key succeeds within `timeout`, to a guest that shows
/// the pinned host key, and finds cloud-init finished.
pub fn probe(login: &Login, timeout: Duration) -> bool {
    let command = ["test", "-e", BOOT_FINISHED].map(String::from);
    batch_command(login, timeout, &command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How [`wait_ready`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The guest answered.
    Ready,
    /// The deadline passed first.
    TimedOut,
    /// The caller's `give_up` said so.
    GaveUp,
}

/// Probes the guest every second until it answers an SSH login, `deadline` passes or
/// `give_up` returns true (asked before each probe).
pub fn wait_ready(login: &Login, deadline: Instant, give_up: impl Fn() -> bool) -> Wait {
    loop {
        if give_up() {
            return Wait::GaveUp;
        }
        if probe(login, Duration::from_secs(5)) {
            return Wait::Ready;
        }
        if Instant::now() >= deadline {
            return Wait::TimedOut;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `ssh` running `command` in the VM (as [`args`] does) without a terminal or a password
/// prompt, giving up on connecting after `timeout`: how qemu-compose runs commands of its own.
pub fn batch_command(login: &Login, timeout: Duration, command: &[String]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o"])
        .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)))
        .args(args(login, &[], command))
        .stdin(Stdio::null());
    cmd
}

/// `words` as one line for the remote shell that runs each as one argument, even a single
/// one (`["/opt/my check"]` runs that program, not `/opt/my` with an argument).
pub fn quoted_line(words: &[String]) -> String {
    shell_line(words, false)
}

/// `words` as a command line to show (`inspect`'s SSH command): quoted only where a shell
/// needs it, so that it reads as typed and can be pasted.
pub fn readable_line(words: &[String]) -> String {
    shell_line(words, true)
}

/// One word as [`readable_line`] writes it.
pub fn readable_word(word: &str) -> String {
    shell_quote(word, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Login<'static> {
        Login {
            key: Path::new("/k"),
            user: "deb",
            port: 2222,
            vm: "web",
            known_hosts: Path::new("/state/known_hosts"),
        }
    }

    #[test]
    fn words_are_quoted_for_people_only_when_needed() {
        assert_eq!(readable_word("-nodefaults"), "-nodefaults");
        assert_eq!(readable_word("a b"), "'a b'");
        assert_eq!(readable_word("it's"), r"'it'\''s'");
        assert_eq!(readable_word(""), "''");
        let words = ["A=b".to_string(), "if".to_string(), "it's".to_string()];
        assert_eq!(readable_line(&words), r"A=b if 'it'\''s'");
        // A command that runs is quoted word by word: `A=b` is no assignment, `if` no keyword.
        assert_eq!(quoted_line(&words), r"'A=b' 'if' 'it'\''s'");
    }

    #[test]
    fn remote_command_follows_the_host_after_a_double_dash() {
        let a = args(&login(), &[], &["ls".into(), "-la".into()]);
        let tail: Vec<_> = a.iter().rev().take(3).rev().cloned().collect();
        assert_eq!(tail, ["127.0.0.1", "--", "'ls' '-la'"]);
        assert!(a.windows(2).any(|w| w == ["-l", "deb"]));
        assert!(a.windows(2).any(|w| w == ["-p", "2222"]));
        let bare = args(&login(), &[], &[]);
        assert_eq!(bare.last().map(String::as_str), Some("127.0.0.1"));
        for pinned in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=\"/state/known_hosts\"",
            "HostKeyAlias=qemu-compose-web",
        ] {
            assert!(a.windows(2).any(|w| w == ["-o", pinned]), "{pinned}: {a:?}");
        }
    }

    fn split(words: &[&str], after: &[&str]) -> (Vec<String>, Vec<String>) {
        let owned = |w: &[&str]| w.iter().map(ToString::to_string).collect::<Vec<_>>();
        split_words(&owned(words), &owned(after)).unwrap()
    }

    #[test]
    fn options_before_the_command_go_to_ssh() {
        let (o, c) = split(&["-L", "8080:localhost:80"], &[]);
        assert_eq!(o, ["-L", "8080:localhost:80"]);
        assert!(c.is_empty());
        let (o, c) = split(&["-vL", "1:a:2", "-N", "--", "top", "-b"], &[]);
        assert_eq!(o, ["-vL", "1:a:2", "-N"]);
        assert_eq!(c, ["top", "-b"]);
        let (o, c) = split(&["-L1:a:2", "ls", "-la", "--", "x"], &[]);
        assert_eq!(o, ["-L1:a:2"]);
        assert_eq!(c, ["ls", "-la", "--", "x"]);
        // `ssh web -- -x`: the parser took the `--`; `-x` is the command.
        let (o, c) = split(&[], &["-x"]);
        assert!(o.is_empty());
        assert_eq!(c, ["-x"]);
        let missing = split_words(&["-o".to_string()], &[]).unwrap_err();
        assert_eq!(missing, "the ssh option -o needs a value");
        // The user's options come after ours and before the host.
        let a = args(&login(), &["-L".into(), "1:a:2".into()], &["top".into()]);
        let at = a.iter().position(|w| w == "-L").unwrap();
        assert!(
            at > a
                .iter()
                .position(|w| w == "StrictHostKeyChecking=yes")
                .unwrap()
        );
        assert_eq!(&a[at..], ["-L", "1:a:2", "127.0.0.1", "--", "top"]);
    }
}

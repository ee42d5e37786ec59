//! The command line: argument definitions, dispatch, output, and the one place errors are
//! printed.
//!
//! Exit status: 0 on success, 2 for usage errors and invalid compose files, 1 for anything
//! else (docs/architecture.md, "Command line and exit status").

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use qemu_compose::compose::ComposeErrors;

mod config;
mod console;
mod cp;
mod doctor;
mod export;
mod image;
mod inspect;
mod lifecycle;
mod logs;
pub mod output;
mod progress;
mod project;
mod ps;
mod pull;
mod run;
mod ssh;
mod verbs;
mod volume;

/// Run QEMU virtual machines from a compose file, rootless.
#[derive(Debug, Parser)]
#[command(name = "qemu-compose", version, propagate_version = true)]
#[command(about = "Run QEMU virtual machines from a compose file, rootless")]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options given before the command, as with docker compose (`-f` after `logs` means follow).
///
/// Every `QEMU_COMPOSE_*` variable qemu-compose reads is the `env` of one of these, so
/// `--help` lists it; an empty variable counts as unset ([`Cli::from_process`]).
#[derive(Debug, Args)]
struct GlobalArgs {
    /// The compose file; repeat to merge several, in order ('-' reads standard input)
    /// [default: qemu-compose.yaml or qemu-compose.yml in this directory or the nearest parent,
    /// with qemu-compose.override.yaml beside it]
    #[arg(
        short = 'f',
        long = "file",
        value_name = "PATH",
        env = "QEMU_COMPOSE_FILE"
    )]
    file: Vec<PathBuf>,
    /// Also use the VMs of this profile; repeat for several (the variable takes a
    /// comma-separated list)
    #[arg(
        long = "profile",
        value_name = "NAME",
        env = "QEMU_COMPOSE_PROFILES",
        value_delimiter = ','
    )]
    profile: Vec<String>,
    /// The project name [default: `name:` in the compose file, else the project directory's
    /// name]
    #[arg(
        short = 'p',
        long = "project-name",
        value_name = "NAME",
        env = "QEMU_COMPOSE_PROJECT_NAME",
        value_parser = project_name
    )]
    project_name: Option<String>,
    /// The QEMU binary of the VMs of this host's architecture: a path, or a name looked up on
    /// PATH [default: qemu-system-x86_64 on x86_64, qemu-system-aarch64 on arm64; other VMs
    /// always use qemu-system-<arch>]
    #[arg(long, value_name = "PROGRAM", env = "QEMU_COMPOSE_QEMU")]
    qemu: Option<OsString>,
    /// The accelerator of every VM, over their `accel:` keys: auto, kvm or tcg
    #[arg(long, value_name = "MODE", env = "QEMU_COMPOSE_ACCEL")]
    accel: Option<String>,
    /// The UEFI code image (64 MiB) of aarch64 VMs that boot their image and have no
    /// `firmware:` key [default: /usr/share/AAVMF/AAVMF_CODE.fd, from qemu-efi-aarch64]
    #[arg(long, value_name = "PATH", env = "QEMU_COMPOSE_AARCH64_FIRMWARE")]
    aarch64_firmware: Option<PathBuf>,
    /// Print the full error chain and what qemu-compose does (the variable takes 1/0,
    /// true/false, yes/no, on/off; empty is off)
    #[arg(
        long,
        global = true,
        env = "QEMU_COMPOSE_DEBUG",
        hide_env_values = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    debug: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and start the VMs (volumes, disks and seeds first)
    Up(UpArgs),
    /// Stop running VMs: ACPI power-off, then quit, then kill
    Stop(StopArgs),
    /// Stop VMs and remove their instance folders (named volumes stay unless -v)
    #[command(visible_alias = "down")]
    Destroy(DestroyArgs),
    /// Start VMs that `up` created, and the VMs they depend on; creates nothing
    Start(VmsArgs),
    /// Stop VMs, then start them again
    Restart(StopArgs),
    /// Freeze the guests of running VMs (QEMU keeps running)
    Pause(VmsArgs),
    /// Let paused guests run again
    Unpause(VmsArgs),
    /// Print the host address forwarded to a guest port
    Port(PortArgs),
    /// Run a command in a one-off instance of a VM (its own disk, seed and SSH port)
    Run(RunArgs),
    /// List the project's VMs and their status
    Ps(PsArgs),
    /// Show everything about one VM
    Inspect(InspectArgs),
    /// Attach the terminal to a VM's serial console (Ctrl+] detaches)
    Console(VmArg),
    /// Run ssh into a VM, with the project key (extra arguments go to ssh)
    Ssh(SshArgs),
    /// Show the serial console log of VMs
    Logs(LogsArgs),
    /// Download the images of VMs (or one URL) into the image cache
    Pull(PullArgs),
    /// Manage the image cache
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage the project's named volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Copy files out of a named volume, or out of a stopped VM's named volume, without booting
    Cp(CpArgs),
    /// Validate the compose files and print them merged, as one normalised compose file
    Config(ConfigArgs),
    /// Check this host: QEMU, acceleration, 9p, ssh, socket paths, disk space
    Doctor(DoctorArgs),
    /// Write the project for another engine
    #[command(subcommand)]
    Export(ExportCommand),
    /// Print the version
    Version,
    /// Print a shell completion script
    Completion(CompletionArgs),
    /// The project's network switch (started by `up`; not for direct use)
    #[command(hide = true)]
    NetworkSwitch(NetworkSwitchArgs),
}

#[derive(Debug, Args)]
struct NetworkSwitchArgs {
    /// The lock file the switch holds while it lives
    #[arg(long, value_name = "PATH")]
    lock: PathBuf,
    /// A network and its socket
    #[arg(long = "network", value_name = "NAME=SOCKET", value_parser = network_socket)]
    networks: Vec<(String, PathBuf)>,
}

fn network_socket(arg: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not NAME=SOCKET"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

#[derive(Debug, Args)]
struct UpArgs {
    /// VMs to start (default: all), with the VMs they depend on
    vms: Vec<String>,
    /// Accepted as docker compose users write it (`up -d`): up always returns once the VMs
    /// run (--wait waits until they are ready)
    #[arg(short = 'd', long = "detach")]
    _detach: bool,
    /// Wait until every VM is healthy (with a health check) or answers SSH
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait, and for a dependency to be healthy
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait_timeout: u64,
    /// Create volumes, disks and seeds, but start nothing
    #[arg(long)]
    no_start: bool,
    /// Restart VMs whose configuration changed
    #[arg(long)]
    force_recreate: bool,
    /// Seconds a VM being recreated gets to power off [default: its stop_grace_period, else 60]
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Stop and remove the VMs of this project that the compose file no longer has
    #[arg(long)]
    remove_orphans: bool,
}

#[derive(Debug, Args)]
struct StopArgs {
    /// VMs to stop (default: all, in reverse start order)
    vms: Vec<String>,
    /// Do not ask the guest to power off; end QEMU at once
    #[arg(long)]
    force: bool,
    /// Seconds to wait for the guest to power off [default: the VM's stop_grace_period, else
    /// 60]
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

#[derive(Debug, Args)]
struct DestroyArgs {
    /// VMs to destroy (default: all)
    vms: Vec<String>,
    /// Do not ask the guests to power off first
    #[arg(long)]
    force: bool,
    /// Seconds to wait for each guest to power off [default: the VM's stop_grace_period, else
    /// 60]
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Also remove the named volumes the compose file declares (not with VM names: `volume rm`
    /// removes single volumes)
    #[arg(short = 'v', long, conflicts_with = "vms")]
    volumes: bool,
    /// Also stop and remove the VMs of this project that the compose file no longer has
    #[arg(long)]
    remove_orphans: bool,
}

#[derive(Debug, Args)]
struct VmsArgs {
    /// VMs (default: all)
    vms: Vec<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Remove the one-off instance afterwards, also after a failure or Ctrl-C
    #[arg(long)]
    rm: bool,
    /// Do not start the VMs it depends on
    #[arg(long)]
    no_deps: bool,
    /// Seconds to wait for the instance to answer SSH (and for dependencies to be healthy)
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait_timeout: u64,
    /// The VM
    vm: String,
    /// The command and its arguments (after `--` when it has options of its own); none for a
    /// login shell. Its exit status becomes ours
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct PortArgs {
    /// The VM
    vm: String,
    /// The port in the guest
    guest_port: u16,
    /// The protocol
    #[arg(long, value_enum, default_value_t = PortProtocol::Tcp)]
    protocol: PortProtocol,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PortProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TableFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TextFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModelFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct PsArgs {
    /// VMs to list (default: all)
    vms: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    format: TableFormat,
    /// Print only the VM names
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The VM
    vm: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    format: TextFormat,
}

#[derive(Debug, Args)]
struct VmArg {
    /// The VM
    vm: String,
}

#[derive(Debug, Args)]
struct SshArgs {
    /// Seconds to wait for the SSH server of a VM that is still starting
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait_timeout: u64,
    /// The VM
    vm: String,
    /// Options for ssh (`-L 8080:localhost:80`), then a command (`-- CMD…`, or CMD… that
    /// does not start with '-') to run instead of a login shell; its exit status becomes ours
    #[arg(allow_hyphen_values = true, value_name = "SSH_OPTIONS_OR_CMD")]
    words: Vec<String>,
    /// The command, after `--`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// VMs whose logs to show (default: all)
    vms: Vec<String>,
    /// Keep following new output
    #[arg(short, long)]
    follow: bool,
    /// Show only the last N lines
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Pass the guest's control characters (colours, cursor moves) to the terminal as they
    /// are; by default they are shown as ^[ and the like
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Args)]
struct PullArgs {
    /// VM names, or one http(s) URL (default: every VM's image)
    targets: Vec<String>,
    /// Download again even when the image is cached
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// List cached images
    Ls {
        /// Only the file names
        #[arg(short, long)]
        quiet: bool,
        /// Output format
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Remove cached images
    Rm {
        /// Image file names as `image ls` shows them
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove even when an instance disk is based on it
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// List the project's named volumes
    Ls {
        /// Only the volume names
        #[arg(short, long)]
        quiet: bool,
        /// Output format
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        format: TableFormat,
    },
    /// Create a named volume (it need not be declared in the compose file)
    Create {
        /// The volume name
        name: String,
        /// Its size, e.g. 20G [default: the declared size, else 10G]
        #[arg(long)]
        size: Option<String>,
    },
    /// Show a volume's record, image and filesystem
    Inspect {
        /// The volume name
        name: String,
        /// Output format
        #[arg(long, value_enum, default_value_t = TextFormat::Text)]
        format: TextFormat,
    },
    /// Create a volume holding the files of a host folder or an uncompressed tar archive
    Import {
        /// The volume name (a new volume)
        name: String,
        /// A folder, a tar archive, or - for a tar archive on standard input
        source: PathBuf,
        /// Where the files go in the volume
        #[arg(long, value_name = "PATH", default_value = "/")]
        into: String,
        /// The volume's size, e.g. 20G [default: the declared size, else 10G]
        #[arg(long)]
        size: Option<String>,
    },
    /// Copy a volume's files into a host folder or a tar archive, without booting
    Export {
        /// The volume name
        name: String,
        /// A folder (made if missing; existing names are never overwritten), a file ending in
        /// .tar, or - for a tar archive on standard output
        dest: PathBuf,
        /// What to copy from the volume
        #[arg(long, value_name = "PATH", default_value = "/")]
        from: String,
    },
    /// Remove named volumes and their data
    Rm {
        /// Volume names
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove even when a stopped VM of the project lists it
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct CpArgs {
    /// volume:NAME:/path, or VM:/path for a path on a named volume of a stopped VM
    src: String,
    /// A host folder (made if missing; existing names are never overwritten), or - for a tar
    /// archive on standard output
    dest: String,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Only validate; print nothing when the file is valid
    #[arg(short, long)]
    quiet: bool,
    /// Print the VM names, one per line, in compose order (docker's `--services`)
    #[arg(long, visible_alias = "vms", conflicts_with_all = ["quiet", "volumes"])]
    services: bool,
    /// Print the named volumes, one per line
    #[arg(long, conflicts_with = "quiet")]
    volumes: bool,
    /// Print the resolved model instead of a compose file: the project folder, sizes in
    /// bytes, every mount option apart (for scripts and bug reports)
    #[arg(long, conflicts_with_all = ["quiet", "services", "volumes"])]
    model: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ModelFormat::Yaml)]
    format: ModelFormat,
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// Kubernetes manifests for KubeVirt and CDI: VMs, volumes, Services, NetworkPolicies
    Kubevirt(KubevirtArgs),
}

#[derive(Debug, Args)]
struct KubevirtArgs {
    /// A folder for the manifests (one file per VM, volumes.yaml, README.txt with the upload
    /// commands), or - for one YAML stream on standard output
    #[arg(short, long, value_name = "DIR", default_value = "-")]
    output: PathBuf,
    /// The namespace of every object [default: none: kubectl's current namespace]
    #[arg(long, value_name = "NS", value_parser = namespace)]
    namespace: Option<String>,
}

/// A namespace is an RFC 1123 label.
fn namespace(text: &str) -> Result<String, String> {
    if qemu_compose::engine::kubevirt::is_namespace(text) {
        Ok(text.to_owned())
    } else {
        Err("a namespace is lowercase letters, digits and '-', at most 63, not beginning or ending with '-'".into())
    }
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = TableFormat::Table)]
    format: TableFormat,
}

#[derive(Debug, Args)]
struct CompletionArgs {
    /// The shell
    shell: clap_complete::Shell,
}

/// Prints the engine's progress and warnings on stderr, leaving stdout to command output;
/// with `--debug`, also the details (QEMU's command line, timings).
struct StderrReporter;

/// `--debug`, set once by [`run`] for the reporter.
static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl qemu_compose::engine::Reporter for StderrReporter {
    fn info(&self, message: &str) {
        output::note!("{message}");
    }

    fn warn(&self, message: &str) {
        output::note!("warning: {message}");
    }

    fn detail(&self, message: &str) {
        if DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
            output::note!("debug: {message}");
        }
    }
}

/// A project name given on the command line or in the environment: refused there, as a
/// usage error, rather than blamed on the compose file.
fn project_name(text: &str) -> Result<String, String> {
    if qemu_compose::compose::is_valid_name(text) {
        Ok(text.to_owned())
    } else {
        Err("a project name must match [a-z0-9][a-z0-9_-]*".to_owned())
    }
}

impl Cli {
    /// Parses the process's arguments and `QEMU_COMPOSE_*` variables; invalid usage ends the
    /// process with clap's message and status 2. A variable set to the empty string counts
    /// as unset (clap would take the empty value), as it did when the program read them
    /// itself: `QEMU_COMPOSE_FILE= qemu-compose ps` searches for the compose file, and
    /// `QEMU_COMPOSE_DEBUG=` is off.
    pub fn from_process() -> Self {
        let mut cmd = same_version_name(Self::command());
        let empty: Vec<clap::Id> = cmd
            .get_arguments()
            .filter(|arg| {
                arg.get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|value| value.is_empty())
            })
            .map(|arg| arg.get_id().clone())
            .collect();
        for id in empty {
            cmd = cmd.mut_arg(id, |arg| arg.env(None::<&'static str>));
        }
        Self::from_arg_matches(&cmd.get_matches())
            .unwrap_or_else(|err| err.format(&mut Self::command()).exit())
    }

    /// Whether `--debug` (or `QEMU_COMPOSE_DEBUG`) asks for the full error chain.
    pub fn debug(&self) -> bool {
        self.global.debug
    }
}

/// Every subcommand's `-V` says `qemu-compose 0.1.0`, not `qemu-compose-volume-ls 0.1.0`.
fn same_version_name(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    let mut cmd = cmd.display_name("qemu-compose");
    for name in names {
        cmd = cmd.mut_subcommand(name, same_version_name);
    }
    cmd
}

/// Prints `err` on stderr and returns the exit status it means.
pub fn report(err: &anyhow::Error, debug: bool) -> ExitCode {
    // An invalid compose file is a usage error: every problem, one per line, then exit 2.
    if let Some(errors) = err.downcast_ref::<ComposeErrors>() {
        for e in &errors.0 {
            output::note!("error: {e}");
        }
        return ExitCode::from(2);
    }
    let code = exit_code(err);
    if debug {
        output::note!("error: {err:?}");
    } else {
        output::note!("error: {}", chain_text(err));
    }
    ExitCode::from(code)
}

/// The error and its causes on one line, `a: b: c`. Many error types already show their
/// cause in their own message (`path: No such file`) and also return it as their source;
/// a cause whose text the line already ends with is not repeated.
fn chain_text(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// The exit status the error calls for, as the first error of ours in its chain says:
/// 2 for "the command line asked for something invalid", 1 for "it failed".
fn exit_code(err: &anyhow::Error) -> u8 {
    use qemu_compose::engine::{EngineError, volumes::VolumeError};
    err.chain()
        .find_map(|e| {
            if e.is::<UsageError>() {
                Some(2)
            } else if let Some(e) = e.downcast_ref::<EngineError>() {
                Some(e.exit_code())
            } else {
                e.downcast_ref::<VolumeError>().map(VolumeError::exit_code)
            }
        })
        .unwrap_or(1)
}

/// A command-line value the command cannot use (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Runs the command. What it prints goes through [`output::stdout`], flushed before this
/// returns, so a failed write comes back as an error ([`output::reader_gone`] tells a closed
/// pipe).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    DEBUG.store(cli.debug(), std::sync::atomic::Ordering::Relaxed);
    let code = dispatch(cli)?;
    output::stdout().flush()?;
    Ok(code)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            writeln!(
                output::stdout(),
                "qemu-compose {}",
                env!("CARGO_PKG_VERSION")
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "qemu-compose", &mut script);
            output::stdout().write_all(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => lifecycle::up(&cli.global, &args),
        Command::Stop(args) => lifecycle::stop(&cli.global, &args),
        Command::Destroy(args) => lifecycle::destroy(&cli.global, &args),
        Command::Start(args) => verbs::start(&cli.global, &args),
        Command::Restart(args) => verbs::restart(&cli.global, &args),
        Command::Pause(args) => verbs::pause(&cli.global, &args, true),
        Command::Unpause(args) => verbs::pause(&cli.global, &args, false),
        Command::Port(args) => verbs::port(&cli.global, &args),
        Command::Run(args) => run::run(&cli.global, &args),
        Command::Ps(args) => ps::run(&cli.global, &args),
        Command::Inspect(args) => inspect::run(&cli.global, &args),
        Command::Console(args) => console::run(&cli.global, &args),
        Command::Ssh(args) => ssh::run(&cli.global, &args),
        Command::Logs(args) => logs::run(&cli.global, &args),
        Command::Pull(args) => pull::run(&cli.global, &args),
        Command::Image(cmd) => image::run(&cli.global, &cmd),
        Command::Volume(cmd) => volume::run(&cli.global, &cmd),
        Command::Cp(args) => cp::run(&cli.global, &args),
        Command::Config(args) => config::run(&cli.global, &args),
        Command::Doctor(args) => doctor::run(&cli.global, &args),
        Command::Export(ExportCommand::Kubevirt(args)) => export::kubevirt(&cli.global, &args),
        Command::NetworkSwitch(args) => {
            qemu_compose::engine::network::run_switch(&args.lock, &args.networks)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_cause_is_printed_once() {
        use qemu_compose::engine::{EngineError, StateError};
        // A cause the message already shows (`{path}: {source}`) is not repeated.
        let io = std::io::Error::from_raw_os_error(17);
        let state = StateError::Io {
            path: "/p/.qemu-compose".into(),
            source: std::io::Error::from_raw_os_error(17),
        };
        let err = anyhow::Error::new(EngineError::from(state));
        assert_eq!(err.chain().count(), 2);
        assert_eq!(
            chain_text(&err),
            "/p/.qemu-compose: File exists (os error 17)"
        );
        // A VM step keeps its cause as a source: on one line, and in `--debug`'s chain.
        let step = EngineError::Vm {
            vm: "web".into(),
            source: Box::new(io),
        };
        let err = anyhow::Error::new(step).context("up failed");
        assert_eq!(
            chain_text(&err),
            "up failed: VM web: File exists (os error 17)"
        );
        assert_eq!(err.chain().count(), 3);
        assert_eq!(exit_code(&err), 1);
        let unknown = EngineError::UnknownVm {
            name: "x".into(),
            known: "web".into(),
        };
        assert_eq!(exit_code(&anyhow::Error::new(unknown).context("ps")), 2);
    }
}

//! `run [--rm] [--no-deps] VM [--] CMD…`: a command in a one-off instance of a VM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use qemu_compose::engine::run::{self, RunOptions, RunOutcome, SIGNALS};

use super::{GlobalArgs, RunArgs, StderrReporter, progress, project};

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, std::slice::from_ref(&args.vm))?;
    let host = project::host(global)?;
    // Ctrl-C (and SIGTERM, SIGHUP) must not end this process before the instance is dealt
    // with: the signal only sets the flag, and `run` stops waiting when it sees it. ssh gets
    // Ctrl-C from the terminal itself.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in SIGNALS {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
    }
    let opts = RunOptions {
        vm: args.vm.clone(),
        command: args.command.clone(),
        remove: args.rm,
        no_deps: args.no_deps,
        wait: Duration::from_secs(args.wait_timeout),
    };
    let mut progress = progress::for_stderr();
    let outcome = run::run(
        &project,
        &host,
        &opts,
        &interrupted,
        &StderrReporter,
        progress.as_mut(),
    )?;
    Ok(match outcome {
        RunOutcome::Exited(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        // As a shell reports a process ended by SIGINT.
        RunOutcome::Interrupted => ExitCode::from(130),
    })
}

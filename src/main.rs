//! The `qemu-compose` binary: parse the command line, run the command, print any error once.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::from_process();
    let debug = cli.debug();
    match cli::run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`qemu-compose ps | head -1`): it has what it
        // wanted and nobody is left to read a message, so end quietly, as ripgrep does.
        Err(err) if cli::output::reader_gone(&err) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err, debug),
    }
}

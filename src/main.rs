//! The `qemu-compose` binary: parse the command line, run the command, print any error once.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

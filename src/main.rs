//! The `tcp-integration` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tcp_integration::convert::{TestConverterArgs, run_test_converter};

#[derive(Parser, Debug)]
#[command(name = "tcp-integration", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a converter script on a payload and print the typed result (or an error).
    TestConverter(TestConverterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::TestConverter(args) => {
            let mut stdout = std::io::stdout().lock();
            match run_test_converter(&args, &mut stdout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

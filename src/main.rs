use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    backuphub::memory::tune_allocator();
    let cli = backuphub::cli::Cli::parse();
    match backuphub::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(backuphub::cli::exit::ERROR)
        }
    }
}

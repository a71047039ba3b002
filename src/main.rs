//! The `attnbench` command line: parsing and wiring only.

mod cli;

use std::process::ExitCode;

use attnbench::harness::CountingAllocator;
use clap::Parser;

// Counts heap bytes so that each point's transient memory is measured, not estimated.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let error_exit = args.error_exit_code();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            error_exit
        }
    }
}

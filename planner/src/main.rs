//! `latplan`: the one place where errors and outcomes become exit codes.
use std::process::ExitCode;

use planner::cli::{self, Outcome};

fn main() -> ExitCode {
    match cli::run(std::env::args_os()) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Usage) => ExitCode::from(2),
        Err(e) => {
            // `{:#}` prints the context chain on one line: "invalid inventory X: FILE:L:C: message".
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! Command-line entry: parses arguments and dispatches to one file per subcommand.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}

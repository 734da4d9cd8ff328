fn main() -> std::process::ExitCode {
    planner::cli::main()
}

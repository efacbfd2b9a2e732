//! The `rearguard` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    rearguard::cli::main()
}

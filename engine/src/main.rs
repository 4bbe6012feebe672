fn main() -> std::process::ExitCode {
    cogward::cli::main()
}

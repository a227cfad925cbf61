fn main() -> std::process::ExitCode {
    secur360::cli::main()
}

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    efaprobe::cli::main()
}

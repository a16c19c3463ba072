fn main() {
    std::process::exit(preforkd::cli::main(std::env::args_os().collect()));
}

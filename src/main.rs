mod demo;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The demo worker is an app preforkd runs, not part of the supervisor: it is dispatched
    // here, before the supervisor's command line is looked at.
    if args.get(1).is_some_and(|a| a == demo::COMMAND) {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::process::exit(demo::main(&rest));
    }
    std::process::exit(preforkd::cli::main(args));
}

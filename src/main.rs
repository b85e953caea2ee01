//! The `bitcloud` binary: parse the command line, set up logging, run, print the error chain.

use clap::Parser;

fn main() {
    // glibc gives each thread its own malloc arena, and freed block buffers (up to 16 MiB)
    // stay in them: measured 311 MiB peak RSS in a random-write benchmark with the default,
    // 98 MiB with one arena, at the same speed. Two arenas keep some allocation parallelism.
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let cli = bitcloud::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = bitcloud::cli::run(cli) {
        if let Some(status) = e.downcast_ref::<bitcloud::cli::ExitStatus>() {
            std::process::exit(status.0);
        }
        eprintln!("bitcloud: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

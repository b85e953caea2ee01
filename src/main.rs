//! The `bitcloud` binary: parse the command line, set up logging, run, print the error chain.

use clap::Parser;

fn main() {
    // glibc gives each thread its own malloc arena, and freed block buffers (up to 16 MiB)
    // stay in them: measured 311 MiB peak RSS in a random-write benchmark with the default,
    // 98 MiB with one arena, at the same speed. Two arenas keep some allocation parallelism.
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let argv: Vec<String> = std::env::args().collect();
    if argv
        .first()
        .is_some_and(|a| bitcloud::cli::mount_helper::invoked_as_helper(a))
    {
        // mount(8) and fstab: `mount -t fuse.bitcloud SOURCE DIR -o ...`.
        std::process::exit(bitcloud::cli::mount_helper::run(&argv[1..]));
    }
    let cli = bitcloud::cli::Cli::parse();
    // fuser warns "Unmount failed: Invalid argument" at every clean stop: its session
    // unmounts on drop, after the daemon already unmounted by path (see daemon.rs).
    // Kademlia warns at every periodic bootstrap while a node knows no peer yet (a first
    // node of a pool): expected, not worth a line every five minutes.
    let default = match cli.verbose {
        0 => "warn,fuser::mnt=error,libp2p_kad=error",
        1 => "info,fuser::mnt=error,libp2p_kad=error,libp2p_swarm=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal; under systemd (JOURNAL_STREAM set) the journal stamps each
    // line itself, so ours would be noise.
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1 && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
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

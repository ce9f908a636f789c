//! The qpipe binary: parses arguments and hands them to the library.

mod cli;

use clap::Parser;
use std::io::Write;

fn main() {
    qpipe::process::configure();
    // A panic is a qpipe bug, never the user's fault: one line, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("qpipe: internal error (please report): {info}");
    }));
    // Ctrl-C or SIGTERM: remove the temp file of a write in progress, so an interrupted run
    // leaves finished files only (a search state saved each generation resumes with --resume).
    let _ = ctrlc::set_handler(|| {
        qpipe::checkpoint::write::remove_temp_files();
        eprintln!("qpipe: interrupted; no partial output left");
        std::process::exit(130);
    });
    let cli = cli::Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let code = match cli::run(cli, &mut stdout) {
        Ok(code) => code,
        Err(qpipe::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            0
        }
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("qpipe: error: {msg}");
            2
        }
    };
    let _ = stdout.flush();
    std::process::exit(code);
}

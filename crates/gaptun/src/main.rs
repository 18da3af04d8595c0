//! `gaptun`: the command-line program (server, client, demo, keygen, ctl).
//!
//! Errors end the program with one line on stderr (`gaptun: <message>`) and exit status 1;
//! usage errors come from clap with status 2.

mod apps_wiring;
mod carriers;
mod cli;
mod config;
#[cfg(test)]
mod config_fuzz;
mod ctl;
mod daemon;
mod demo;
mod faketcp_wiring;
mod keys;
mod layer;
mod logging;
mod offer;
mod ratelimit;
mod settings;
mod transport;
mod values;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::ArgMatches;

use crate::cli::{Cli, Command, CtlArgs, CtlCommand};
use crate::config::{NoticeLevel, Role};
use crate::values::LogFormat;

/// The daemon's allocator: mimalloc (its 2.x line) rather than glibc's malloc.
///
/// Why: the receive path allocates one buffer per datagram that carries bulk stream data (the
/// payload that stored STREAM pieces share, see `gaptun_proto`'s `connection/recv.rs`), 64 KB on
/// loopback, freed a moment later on another thread once the application has read it. glibc
/// gives such a block back to the kernel whenever it ends up at the top of a thread's arena
/// (`madvise(MADV_DONTNEED)` once the top exceeds its 128 KiB trim threshold) and then takes page
/// faults to zero the same memory again for the next datagram. Profiled on the expose loopback
/// bulk (`perf record --call-graph dwarf` on the receiving daemon), that churn was 27 % of the
/// daemon's samples, 21 % of them page faults, for a memcpy of 4 %; with mimalloc, which keeps
/// freed pages for reuse, the copy is 4 %, the allocator 1.6 % and page faults none. The
/// harness's CPU per GB on that bulk (both daemons) fell to 0.84 of glibc's in the nine pairs
/// of runs where no system's goodput collapsed under the machine's load, 0.91 over all 24
/// (docs/benchmarks.md, 2026-11-28). What it costs: the daemons hold on to more freed
/// memory (peak RSS of client + server during that bulk 76-105 MiB instead of 47-64; 10 000
/// idle visitors after it 165 MiB instead of 137, within issue 9's 256 MiB). The 3.x line was
/// measured too: same CPU, 20-30 MiB more.
/// A reused receive arena in the core would spare the allocation without a new dependency, but
/// a slice held out of order pins its whole arena block, which breaks the receive side's
/// bound of two bytes held per byte stored (see `SLICE_MIN`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (cli, matches) =
        Cli::try_parse_with_matches(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(&e);
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
}

/// Sets up logging from the command line's and config file's choices (already merged) and
/// `RUST_LOG`.
fn init_logging(log: &settings::FileLog, fallback: &str) -> Result<()> {
    let env = std::env::var("RUST_LOG").ok();
    let filter = logging::filter_text(log.level.as_deref(), None, env.as_deref(), fallback);
    logging::init(&filter, log.format.unwrap_or(LogFormat::Text))?;
    for notice in &log.notices {
        match notice.level {
            NoticeLevel::Info => tracing::info!("{}", notice.text),
            NoticeLevel::Warn => tracing::warn!("{}", notice.text),
        }
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: every proxied TCP connection takes a
/// descriptor on each side, and the usual soft limit of 1024 would cap a busy client or server
/// far below what it can serve (Go programs such as kcptun get this from their runtime).
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("open files limit: {limit}"),
        Err(e) => tracing::debug!("cannot raise the open files limit: {e}"),
    }
}

/// `matches` are the subcommand's: they tell given flags from defaults.
fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let env_key = std::env::var(keys::KEY_ENV).ok();
    match &cli.command {
        Command::Keygen => {
            println!(
                "{}",
                keys::generate_key().map_err(|e| anyhow!("no OS randomness: {e}"))?
            );
            Ok(())
        }
        Command::Server(args) => {
            let (s, log) = settings::server(args, matches, env_key)?;
            init_logging(&log, "info")?;
            raise_open_files_limit();
            runtime()?.block_on(daemon::run_server(s))
        }
        Command::Client(args) => {
            let (s, log) = settings::client(args, matches, env_key)?;
            init_logging(&log, "info")?;
            raise_open_files_limit();
            runtime()?.block_on(daemon::run_client(s))
        }
        Command::Demo(args) => {
            // The demo draws its figures on stdout; keep logs to warnings unless asked.
            init_logging(&args.log.clone().into(), "warn")?;
            raise_open_files_limit();
            let d = demo::DemoSettings {
                socks: args.socks.0,
                loss: args.loss / 100.0,
                delay: Duration::from_millis(args.delay),
                seed: args.seed,
                transport: args.transport.build()?,
            };
            runtime()?.block_on(demo::run(d))
        }
        Command::Ctl(args) => run_ctl(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "gaptun", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(|e| anyhow!("cannot write the man page: {e}")),
    }
}

/// `gaptun ctl`: sends one command and prints the answer; an `error:` answer fails.
///
/// Without `--socket` it talks to whichever daemons answer on the default client and server
/// sockets. When both run on this host, `stats` shows both (the table of each, or a JSON array);
/// `wnd` needs a choice, since changing the wrong daemon's window silently would be worse.
fn run_ctl(args: &CtlArgs) -> Result<()> {
    let line = args.command.line();
    let rt = runtime()?;
    let paths = match &args.socket {
        Some(p) => vec![p.clone()],
        None => {
            let client = ctl::default_socket_path(Role::Client);
            let server = ctl::default_socket_path(Role::Server);
            let live: Vec<_> = [&client, &server]
                .into_iter()
                .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
                .cloned()
                .collect();
            match live.len() {
                // Neither answers: report it for the client's path (the usual case).
                0 => vec![client],
                2 if !line.starts_with("stats") => {
                    return Err(anyhow!(
                        "both a client ({}) and a server ({}) run here: choose one with --socket",
                        client.display(),
                        server.display()
                    ));
                }
                _ => live,
            }
        }
    };
    if let CtlCommand::Top { count } = args.command {
        return run_top(&rt, &paths, count);
    }
    let mut answers = Vec::new();
    for path in &paths {
        let answer = rt.block_on(ctl::request(path, &line))?;
        if let Some(e) = answer.strip_prefix("error: ") {
            return Err(anyhow!("{}", e.trim_end()));
        }
        answers.push(answer);
    }
    let out = match answers.as_slice() {
        [one] => one.clone(),
        many if line.ends_with("json") => format!(
            "[{}]\n",
            many.iter()
                .map(|a| a.trim_end())
                .collect::<Vec<_>>()
                .join(",")
        ),
        many => many.join("\n"),
    };
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`gaptun ctl stats | head -1`) is not an error worth a panic.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    Ok(())
}

/// `gaptun ctl top`: asks every daemon in `paths` for its `top` screen once a second and
/// redraws it (on a terminal the screen is cleared first; piped, screens follow each other
/// after a blank line), `count` times or until interrupted.
fn run_top(
    rt: &tokio::runtime::Runtime,
    paths: &[std::path::PathBuf],
    count: Option<u64>,
) -> Result<()> {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let mut screen = String::new();
        for path in paths {
            let answer = rt.block_on(ctl::request(path, "top"))?;
            if let Some(e) = answer.strip_prefix("error: ") {
                return Err(anyhow!("{}", e.trim_end()));
            }
            if !screen.is_empty() {
                screen.push('\n');
            }
            screen.push_str(&answer);
        }
        let mut stdout = std::io::stdout().lock();
        let framed = if terminal {
            format!("\x1b[H\x1b[2J{screen}")
        } else if shown > 0 {
            format!("\n{screen}")
        } else {
            screen
        };
        if stdout
            .write_all(framed.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`gaptun ctl top | head`): nothing left to do.
            return Ok(());
        }
        drop(stdout);
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

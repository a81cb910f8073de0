//! What every matchplane binary's `main` does the same way: parse flags and environment into a
//! config (a bad one is one line on stderr and exit status 2, before anything binds), read a
//! duration setting, and turn SIGTERM or ctrl-c into a cancelled shutdown token.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Parses the command line and environment, or says in one line what is wrong.
/// `--help` and `--version` print and exit as usual.
pub fn parse<C: clap::Parser>(binary: &str) -> Result<C, ExitCode> {
    match C::try_parse() {
        Ok(config) => Ok(config),
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{binary}: {}", one_line(&e));
            Err(ExitCode::from(2))
        }
    }
}

/// A parse error as one line: clap's first, plus the values a setting takes when there is a
/// fixed set of them (`RUNTIME=bogus` says which runtimes there are).
fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = e.render().to_string();
    let mut line = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    if let Some(ContextValue::Strings(values)) = e.get(ContextKind::ValidValue) {
        line.push_str(&format!(" (one of: {})", values.join(", ")));
    }
    line
}

/// Parses `args` alone, as if no environment variable were set: settings for tests and tools
/// that must not change with the shell they run in (an exported `SESSION_SIZE`, say).
pub fn parse_without_env<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = C::command().mut_args(|arg| arg.env(None)).try_get_matches_from(args)?;
    C::from_arg_matches(&matches)
}

/// A setting in seconds (decimals allowed), refused with its name if negative or absurd.
pub fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if (0.0..1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{name} must be a number of seconds >= 0, got {value}"))
    }
}

/// A dependency the server cannot start without is not there (or its setting is wrong):
/// [`serve`] prints this one line and exits with status 2, as for a bad setting.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The rest of a multi-threaded server's `main`: start the runtime, bind `bind`, turn signals
/// into a cancelled shutdown token, and run `run(listener, shutdown)` to its end. Exit status
/// 2 with one line on stderr when the run fails with [`Unreachable`]; 1 when the runtime, the
/// bind or the run fails otherwise.
pub fn serve<F, Fut>(binary: &str, bind: std::net::SocketAddr, run: F) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let descriptors = prepare_for_connections();
    let huge_pages = disable_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{binary}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        let listener = match crate::net::listen(bind, crate::net::BURST_BACKLOG) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("{binary}: cannot listen on {bind}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match descriptors {
            Ok((limit, table)) => tracing::info!(open_files = limit, descriptor_table = table, "open-file limit"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot raise the open-file limit or size the descriptor table ahead; a burst of connections may run out or wait"
            ),
        }
        if let Err(e) = huge_pages {
            tracing::warn!(error = %e, "cannot turn transparent huge pages off; a burst's first memory growth is slower");
        }
        match run(listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
                eprintln!("{binary}: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{binary} failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Turns transparent huge pages off for this process (and the processes it starts).
/// mimalloc asks for huge pages on its arenas; when a server's memory grows in a burst (a
/// thousand connections arriving at once) each fault then zeroes a whole 2 MiB page, and
/// freed memory returned in 64 KiB pieces splits them again. Measured on a 1,200-player burst
/// through proxy and backend: p99 join → matched 507 → 387 ms on the first burst after start,
/// about 335 → 300 ms on later ones.
pub fn disable_transparent_huge_pages() -> nix::Result<()> {
    nix::sys::prctl::set_thp_disable(true)
}

/// Raises this process's soft limit on open files to its hard limit, as a server holding one
/// descriptor (or, spliced, several) per connection needs: container runtimes commonly start
/// processes at a soft limit of 1024. Returns the limit now in force.
pub fn raise_open_file_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// What a process about to hold thousands of sockets does before its runtime starts its
/// threads: raises the open-file limit ([`raise_open_file_limit`]) and sizes the descriptor
/// table for it ([`reserve_descriptor_table`]). Returns the limit and the table's size.
pub fn prepare_for_connections() -> std::io::Result<(u64, u64)> {
    let limit = raise_open_file_limit()?;
    Ok((limit, reserve_descriptor_table(limit)?))
}

/// The most descriptors [`reserve_descriptor_table`] makes room for: about half a MiB of kernel
/// memory. Past it the table still grows as needed, a doubling at a time.
pub const DESCRIPTOR_TABLE_RESERVE: u64 = 65_536;

/// Sizes this process's descriptor table now for `limit` open files (the limit in force; at
/// most [`DESCRIPTOR_TABLE_RESERVE`]), and returns the size the kernel then reports.
///
/// The kernel grows a process's table of descriptors by doubling it when a new descriptor
/// does not fit, and in a process with more than one thread each growth first waits out an
/// RCU grace period, while every other thread that opens a descriptor waits for it too.
/// Measured here, each wait took 8-20 ms with the CPUs otherwise idle: a multi-threaded server
/// or client that starts at 64 descriptors and reaches thousands in one burst of connections
/// stalls that long several times over, all its threads at once. Grown once at start, before
/// the runtime starts its threads, the table costs no such wait. It never shrinks.
pub fn reserve_descriptor_table(limit: u64) -> std::io::Result<u64> {
    use nix::fcntl::{FcntlArg, fcntl};
    let size = limit.min(DESCRIPTOR_TABLE_RESERVE);
    if size > 1 {
        let probe = std::fs::File::open("/dev/null")?;
        let highest = i32::try_from(size - 1).unwrap_or(i32::MAX);
        // The copy lands at the lowest free descriptor from `highest` up, so the table grows to
        // hold it; it is closed again at once.
        nix::unistd::close(fcntl(&probe, FcntlArg::F_DUPFD_CLOEXEC(highest))?)?;
    }
    descriptor_table_size()
}

/// How many descriptors this process's table holds now (`FDSize` in `/proc/self/status`).
pub fn descriptor_table_size() -> std::io::Result<u64> {
    std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no FDSize in /proc/self/status"))
}

/// Cancels `shutdown` on SIGTERM or SIGINT (ctrl-c). Both handlers are in place when this
/// returns (the waiting runs in a task of its own), so a signal that arrives any time after the
/// call asks for a clean stop: call it before announcing readiness or binding, or a stop asked
/// for the moment the process is up kills it with the signal's default action instead.
/// Needs a tokio runtime with I/O enabled.
pub fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(interrupt)) => (term, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
            return;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("interrupt: shutting down"),
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_value_outside_a_fixed_set_is_refused_naming_the_set() {
        #[derive(clap::Parser, Debug)]
        struct Settings {
            #[arg(long, value_enum)]
            runtime: Runtime,
        }
        #[derive(clap::ValueEnum, Clone, Debug)]
        enum Runtime {
            Local,
            Kubernetes,
            None,
        }
        let e = super::parse_without_env::<Settings, _, _>(["test", "--runtime", "bogus"]).unwrap_err();
        assert_eq!(
            super::one_line(&e),
            "invalid value 'bogus' for '--runtime <RUNTIME>' (one of: local, kubernetes, none)"
        );
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // A soft limit as low as container runtimes often start with (never above the hard one).
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(256), hard).unwrap();
        assert_eq!(super::raise_open_file_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }

    #[test]
    fn a_server_runs_without_transparent_huge_pages_and_with_its_descriptor_table_grown() {
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let code = super::serve("test", bind, |_listener, _shutdown| async {
            let status = std::fs::read_to_string("/proc/self/status")?;
            anyhow::ensure!(status.contains("THP_enabled:\t0\n"), "THP still on: {status}");
            let (limit, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
            let wanted = limit.min(super::DESCRIPTOR_TABLE_RESERVE);
            let size = super::descriptor_table_size()?;
            anyhow::ensure!(size >= wanted, "descriptor table {size}, wanted {wanted}: {status}");
            Ok(())
        });
        assert_eq!(code, std::process::ExitCode::SUCCESS);
    }

    #[test]
    fn the_descriptor_table_is_grown_to_the_limit_and_no_further_than_the_reserve() {
        use nix::sys::resource::{Resource, getrlimit};
        let (limit, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let wanted = limit.min(super::DESCRIPTOR_TABLE_RESERVE);
        assert!(
            wanted > 64,
            "this test needs an open-file limit above a new process's 64"
        );
        let size = super::reserve_descriptor_table(limit).unwrap();
        assert!(size >= wanted, "table {size} for a limit of {limit}");
        // The kernel rounds up to a power of two, never past twice what was asked for.
        assert!(size < 2 * wanted, "table {size} for {wanted} descriptors");
        assert_eq!(super::descriptor_table_size().unwrap(), size);
        // The descriptor used to grow it is closed again: the next one opened is a low one.
        let next = std::fs::File::open("/dev/null").unwrap();
        assert!(std::os::fd::AsRawFd::as_raw_fd(&next) < 64);
        // A limit of one asks for nothing and fails nothing.
        assert_eq!(super::reserve_descriptor_table(1).unwrap(), size);
    }

    #[derive(Debug, clap::Parser)]
    struct Example {
        #[arg(long, env = "MP_SERVICE_TEST_SIZE", default_value_t = 12)]
        size: u32,
    }

    #[test]
    fn parsing_without_env_takes_defaults_and_flags_only() {
        // Whatever the shell exports, the defaults and the flags given are what counts.
        let example: Example = super::parse_without_env(["example"]).unwrap();
        assert_eq!(example.size, 12);
        let example: Example = super::parse_without_env(["example", "--size", "3"]).unwrap();
        assert_eq!(example.size, 3);
    }

    #[test]
    fn seconds_refuse_negative_and_absurd() {
        assert_eq!(
            super::seconds("X", 1.5).unwrap(),
            std::time::Duration::from_millis(1500)
        );
        assert!(super::seconds("X", -1.0).unwrap_err().contains('X'));
        assert!(super::seconds("X", f64::NAN).is_err());
        assert!(super::seconds("X", 1e12).is_err());
    }
}

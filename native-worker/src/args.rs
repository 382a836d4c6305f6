//! The worker's command line, as the host spawns it: `--fd N` (an inherited listening socket)
//! or `--port P`, `--ppid PID`, `--log-level LEVEL`. The Python worker's rules hold: one of
//! `--fd` / `--port` is required, `--fd` wins when both are given, `--ppid 0` watches nothing,
//! and a bad command line exits with status 2.

use std::os::fd::RawFd;

use cjm_guest::LogLevel;

use crate::error::{Error, Result};

/// The usage text printed for `--help` and on a bad command line.
pub const USAGE: &str = "usage: <worker> (--fd N | --port P) [--ppid PID] [--log-level LEVEL]

  --fd N             serve on the inherited listening TCP socket N (what the host passes)
  --port P           bind 127.0.0.1:P instead (0 picks a free port)
  --ppid PID         exit when process PID dies
  --log-level LEVEL  DEBUG, INFO, WARNING, ERROR or CRITICAL (default: $CJM_LOG_LEVEL, else INFO)";

/// Where the worker listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// A listening socket the host bound and passed down.
    Fd(RawFd),
    /// A port to bind on 127.0.0.1.
    Port(u16),
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// Where to listen.
    pub listen: Listen,
    /// The process whose death ends the worker.
    pub ppid: Option<u32>,
    /// The least severe log level kept, when given on the command line.
    pub log_level: Option<LogLevel>,
}

impl WorkerArgs {
    /// Parses the arguments after the program name. `--name value` and `--name=value` both
    /// work; anything else is a usage error.
    pub fn parse<I, S>(args: I) -> Result<WorkerArgs>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (mut fd, mut port, mut ppid, mut log_level) = (None, None, None, None);
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| Error::Usage(format!("argument {name}: expected one argument")))
            };
            match name.as_str() {
                "--fd" => fd = Some(number::<RawFd>(&name, &value()?)?),
                "--port" => port = Some(number::<u16>(&name, &value()?)?),
                "--ppid" => ppid = Some(number::<u32>(&name, &value()?)?),
                "--log-level" => log_level = Some(parse_level(&value()?)?),
                other => return Err(Error::Usage(format!("unrecognized arguments: {other}"))),
            }
        }
        let listen = match (fd, port) {
            (Some(fd), _) => Listen::Fd(fd),
            (None, Some(port)) => Listen::Port(port),
            (None, None) => {
                return Err(Error::Usage("one of --fd or --port is required".into()));
            }
        };
        Ok(WorkerArgs {
            listen,
            ppid: ppid.filter(|p| *p != 0),
            log_level,
        })
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Usage(format!("argument {name}: invalid int value: '{text}'")))
}

/// Parses a Python logging level name (`WARN` is accepted for `WARNING`, any case).
pub fn parse_level(text: &str) -> Result<LogLevel> {
    match text.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => Ok(LogLevel::Debug),
        "INFO" => Ok(LogLevel::Info),
        "WARNING" | "WARN" => Ok(LogLevel::Warning),
        "ERROR" => Ok(LogLevel::Error),
        "CRITICAL" | "FATAL" => Ok(LogLevel::Critical),
        _ => Err(Error::Usage(format!("unknown log level '{text}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_wins_and_forms_are_equivalent() {
        let a = WorkerArgs::parse(["--port", "5", "--fd=7", "--ppid", "42"]).unwrap();
        assert_eq!(a.listen, Listen::Fd(7));
        assert_eq!(a.ppid, Some(42));
        let b = WorkerArgs::parse(["--port=0", "--ppid=0", "--log-level", "warn"]).unwrap();
        assert_eq!(b.listen, Listen::Port(0));
        assert_eq!(b.ppid, None);
        assert_eq!(b.log_level, Some(LogLevel::Warning));
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            &[][..],
            &["--ppid", "1"][..],
            &["--fd"][..],
            &["--fd", "x"][..],
            &["--port", "1", "--module", "m"][..],
            &["--port", "1", "--log-level", "LOUD"][..],
        ] {
            let e = WorkerArgs::parse(bad.iter().copied()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}

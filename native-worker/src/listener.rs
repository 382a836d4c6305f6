//! The listening socket: the one the host bound and passed down as `--fd` (no
//! bind-close-rebind race) — a Unix socket in a directory only the host's user can enter (its
//! private channel), or a loopback TCP socket — or a fresh bind of `--port`.
//!
//! Done before the async runtime exists, so a bad descriptor fails the start at once with a
//! clear message rather than an accept loop that never serves.

use std::net::TcpListener;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{SockaddrLike as _, getsockopt, sockopt};

use crate::args::Listen;
use crate::error::{Error, Result};

/// A listening socket of either family.
#[derive(Debug)]
pub enum Listener {
    /// A loopback TCP socket.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener),
}

/// A non-blocking listener for `listen`, ready to hand to tokio.
pub fn open(listen: Listen) -> Result<Listener> {
    let listener = match listen {
        Listen::Fd(fd) => adopt(fd)?,
        Listen::Port(port) => Listener::Tcp(
            TcpListener::bind(("127.0.0.1", port))
                .map_err(|source| Error::Bind { port, source })?,
        ),
    };
    let nonblocking = match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true),
        Listener::Unix(l) => l.set_nonblocking(true),
    };
    nonblocking.map_err(|source| match listen {
        Listen::Fd(fd) => Error::Listener { fd, source },
        Listen::Port(port) => Error::Bind { port, source },
    })?;
    Ok(listener)
}

/// Takes ownership of the inherited descriptor `fd` after checking that it is an open,
/// listening TCP or Unix socket.
fn adopt(fd: RawFd) -> Result<Listener> {
    let invalid = |source: std::io::Error| Error::Listener { fd, source };
    if fd < 0 {
        return Err(invalid(std::io::Error::from_raw_os_error(nix::libc::EBADF)));
    }
    // Check before taking ownership: a closed descriptor must not be wrapped (and later
    // closed) as if it were ours.
    if fcntl_check(fd).is_err() {
        return Err(invalid(std::io::Error::from_raw_os_error(nix::libc::EBADF)));
    }
    // SAFETY: `fd` is open (checked above) and was inherited from the host for this process
    // alone: nothing else in the worker refers to it, `serve` adopts it exactly once, and the
    // returned listener becomes its only owner (closing it on drop).
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close-on-exec: subprocesses the capability starts must not inherit the listener.
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| invalid(e.into()))?;
    match getsockopt(&owned, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err(invalid(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the socket is not listening",
            )));
        }
        Err(e) => return Err(invalid(e.into())),
    }
    let family = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
        .map_err(|e| invalid(e.into()))?
        .family();
    match family {
        Some(nix::sys::socket::AddressFamily::Unix) => Ok(Listener::Unix(owned.into())),
        Some(nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6) => {
            Ok(Listener::Tcp(owned.into()))
        }
        _ => Err(invalid(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket is neither TCP nor Unix",
        ))),
    }
}

/// Whether `fd` is an open descriptor, without taking ownership of it.
fn fcntl_check(fd: RawFd) -> nix::Result<()> {
    // SAFETY: borrowing only for the duration of this F_GETFD call; the descriptor is not
    // closed or stored.
    #[allow(unsafe_code)]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn adopts_a_listening_socket_and_refuses_others() {
        let raw = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .into_raw_fd();
        let Listener::Tcp(listener) = open(Listen::Fd(raw)).unwrap() else {
            panic!("a TCP socket adopted as another family")
        };
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let flags = fcntl(listener.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        drop(listener);
        // A Unix socket: the host's private channel.
        let dir = tempfile::tempdir().unwrap();
        let raw = UnixListener::bind(dir.path().join("w.sock"))
            .unwrap()
            .into_raw_fd();
        assert!(matches!(open(Listen::Fd(raw)), Ok(Listener::Unix(_))));

        assert!(matches!(open(Listen::Fd(-1)), Err(Error::Listener { .. })));
        // A regular file is open but not a socket.
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_fd();
        let raw_file = nix::unistd::dup(fd).unwrap().into_raw_fd();
        assert!(matches!(
            open(Listen::Fd(raw_file)),
            Err(Error::Listener { .. })
        ));

        let Listener::Tcp(port) = open(Listen::Port(0)).unwrap() else {
            panic!("--port is TCP")
        };
        assert!(port.local_addr().unwrap().port() > 0);
    }
}

//! The listening socket: the one the host bound on 127.0.0.1:0 and passed down as `--fd`
//! (no bind-close-rebind race), or a fresh bind of `--port`.
//!
//! Done before the async runtime exists, so a bad descriptor fails the start at once with a
//! clear message rather than an accept loop that never serves.

use std::net::TcpListener;
use std::os::fd::{AsFd, FromRawFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{getsockopt, sockopt};

use crate::args::Listen;
use crate::error::{Error, Result};

/// A non-blocking listener for `listen`, ready to hand to tokio.
pub fn open(listen: Listen) -> Result<TcpListener> {
    let listener = match listen {
        Listen::Fd(fd) => adopt(fd)?,
        Listen::Port(port) => {
            TcpListener::bind(("127.0.0.1", port)).map_err(|source| Error::Bind { port, source })?
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(|source| match listen {
            Listen::Fd(fd) => Error::Listener { fd, source },
            Listen::Port(port) => Error::Bind { port, source },
        })?;
    Ok(listener)
}

/// Takes ownership of the inherited descriptor `fd` after checking that it is an open,
/// listening TCP socket.
fn adopt(fd: RawFd) -> Result<TcpListener> {
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
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // Close-on-exec: subprocesses the capability starts must not inherit the listener.
    fcntl(listener.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| invalid(e.into()))?;
    match getsockopt(&listener, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err(invalid(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the socket is not listening",
            )));
        }
        Err(e) => return Err(invalid(e.into())),
    }
    // Only an inet socket has an address that std can read back.
    listener.local_addr().map_err(invalid)?;
    Ok(listener)
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
        let listener = open(Listen::Fd(raw)).unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let flags = fcntl(listener.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        drop(listener);

        assert!(matches!(open(Listen::Fd(-1)), Err(Error::Listener { .. })));
        // A regular file is open but not a socket.
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_fd();
        let raw_file = nix::unistd::dup(fd).unwrap().into_raw_fd();
        assert!(matches!(
            open(Listen::Fd(raw_file)),
            Err(Error::Listener { .. })
        ));

        let port = open(Listen::Port(0)).unwrap();
        assert!(port.local_addr().unwrap().port() > 0);
    }
}

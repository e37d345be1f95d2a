//! The device listener every shard binds on the same port, and the options of accepted sockets.
//!
//! glommio's own `TcpListener::bind` uses a fixed backlog of 1024 and no SO_REUSEADDR, so the
//! socket is built here with socket2 (SO_REUSEADDR like ThingsBoard, SO_REUSEPORT so the kernel
//! spreads connections over shards, the configured backlog and receive buffer) and handed to
//! glommio. The receive buffer is set on the listener because accepted sockets inherit it and
//! the TCP window scale is negotiated from it during the handshake.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Options of the device listener and its accepted sockets (ThingsBoard `clientConfiguration`,
/// possibly overridden by local settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOptions {
    pub addr: SocketAddr,
    /// `soBacklogOption`: pending-connection queue length (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// `soRcvBuf`, KiB.
    pub rcvbuf_kib: u32,
    /// `soSndBuf`, KiB.
    pub sndbuf_kib: u32,
    /// `soKeepaliveOption`.
    pub keepalive: bool,
    /// `tcpNoDelay`.
    pub nodelay: bool,
}

/// Binds a listening socket with SO_REUSEADDR + SO_REUSEPORT; returns its raw fd, owned by the
/// caller (hand it to `glommio::net::TcpListener::from_raw_fd`).
pub fn bind_reuseport(options: &ListenerOptions) -> io::Result<RawFd> {
    let socket = Socket::new(
        Domain::for_address(options.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_recv_buffer_size(kib_to_bytes(options.rcvbuf_kib))?;
    socket.set_nonblocking(true)?;
    socket.bind(&options.addr.into())?;
    let backlog = i32::try_from(options.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into_raw_fd())
}

/// Applies the per-connection options to an accepted socket.
pub fn configure_accepted(fd: RawFd, options: &ListenerOptions) -> io::Result<()> {
    // SAFETY: `fd` is the open socket of a stream the caller owns for the whole call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    sock.set_tcp_nodelay(options.nodelay)?;
    sock.set_send_buffer_size(kib_to_bytes(options.sndbuf_kib))?;
    if options.keepalive {
        sock.set_tcp_keepalive(&TcpKeepalive::new())?;
    }
    Ok(())
}

/// The local address a bound listener fd is listening on (to learn the port after binding 0).
pub fn local_addr(fd: &impl AsRawFd) -> io::Result<SocketAddr> {
    // SAFETY: the fd is borrowed from a live owner for the duration of the call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    SockRef::from(&borrowed)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener is not an inet socket"))
}

fn kib_to_bytes(kib: u32) -> usize {
    (kib as usize).saturating_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn options(addr: SocketAddr) -> ListenerOptions {
        ListenerOptions {
            addr,
            backlog: 64,
            rcvbuf_kib: 64,
            sndbuf_kib: 32,
            keepalive: true,
            nodelay: true,
        }
    }

    #[test]
    fn two_listeners_share_one_port() {
        let first = bind_reuseport(&options("127.0.0.1:0".parse().unwrap())).unwrap();
        // SAFETY: fresh fd from bind_reuseport, owned here.
        let first = unsafe { OwnedFd::from_raw_fd(first) };
        let addr = local_addr(&first).unwrap();
        assert_ne!(addr.port(), 0);
        let second = bind_reuseport(&options(addr)).unwrap();
        // SAFETY: as above.
        let second = unsafe { OwnedFd::from_raw_fd(second) };
        assert_eq!(local_addr(&second).unwrap(), addr);
        let sock = SockRef::from(&first);
        assert!(sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
    }

    #[test]
    fn accepted_socket_gets_nodelay_keepalive_and_sndbuf() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        configure_accepted(server.as_raw_fd(), &options(client.local_addr().unwrap())).unwrap();
        let sock = SockRef::from(&server);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        // Linux doubles the requested size for bookkeeping.
        assert!(sock.send_buffer_size().unwrap() >= 32 * 1024);
    }
}

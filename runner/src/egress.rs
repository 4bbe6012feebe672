//! Mediated egress: the runner's side of the sandbox's one way out.
//!
//! The sandbox's init listens on a port of the sandbox's own loopback and hands the listening
//! socket to the runner ([`crate::sandbox`]). Every connection the agent makes to it is accepted
//! here, in the host's network namespace, and spliced to the gateway. The agent reaches the
//! gateway and nothing else; the gateway decides every call it makes.
//!
//! The splice is bounded, so one run cannot exhaust the runner or the gateway: at most
//! `max_connections` at once (more are closed as they arrive), a connection that sends nothing
//! within `first_byte_timeout` is closed, and so is one on which nothing moved either way for
//! `idle_timeout` (the gateway keeps a parked call's stream alive with SSE comments). Each
//! connection is one thread polling both sockets.

use cogward_protocol::runner::GatewayEgress;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// How long connecting to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BUFFER_BYTES: usize = 64 * 1024;

/// The splice's bounds, and the line sent upstream first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub max_connections: usize,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub preamble: Option<Arc<[u8]>>,
}

impl From<&GatewayEgress> for Bounds {
    fn from(g: &GatewayEgress) -> Self {
        Bounds {
            max_connections: usize::try_from(g.max_connections).unwrap_or(usize::MAX),
            first_byte_timeout: Duration::from_secs(g.first_byte_timeout_seconds),
            idle_timeout: Duration::from_secs(g.idle_timeout_seconds),
            preamble: g.preamble.as_ref().map(|p| Arc::from(p.as_bytes())),
        }
    }
}

/// Accept the sandbox's connections on `listener` and forward each to `upstream`, on threads of
/// their own, until the runner exits.
pub fn forward(listener: OwnedFd, upstream: SocketAddr, bounds: Bounds) {
    let listener = TcpListener::from(listener);
    let live = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        let mut refused: u64 = 0;
        for conn in listener.incoming() {
            match conn {
                Ok(inside) => {
                    if live.load(Ordering::Acquire) >= bounds.max_connections {
                        refused += 1;
                        if refused.is_power_of_two() {
                            eprintln!(
                                "egress: {refused} connection(s) refused: {} are open (the cap)",
                                bounds.max_connections
                            );
                        }
                        drop(inside);
                        continue;
                    }
                    live.fetch_add(1, Ordering::AcqRel);
                    let mine = live.clone();
                    let bounds = bounds.clone();
                    let spawned = thread::Builder::new().spawn(move || {
                        if let Err(e) = splice(inside, upstream, bounds) {
                            eprintln!("egress: connection to the gateway {upstream}: {e}");
                        }
                        mine.fetch_sub(1, Ordering::AcqRel);
                    });
                    if spawned.is_err() {
                        // The connection went with the closure.
                        live.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    // Out of descriptors: let open connections finish.
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("egress: accepting a sandbox connection: {e}");
                    return;
                }
            }
        }
    });
}

/// Wait for the agent's first byte, connect to the gateway, then copy both ways until both
/// sides are done or nothing moved for the idle timeout.
fn splice(inside: TcpStream, upstream: SocketAddr, bounds: Bounds) -> io::Result<()> {
    let idle = bounds.idle_timeout;
    if !readable_within(&inside, bounds.first_byte_timeout)? {
        return Err(io::Error::new(
            ErrorKind::TimedOut,
            format!(
                "the agent sent nothing within {:?}; closed",
                bounds.first_byte_timeout
            ),
        ));
    }
    let mut outside = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT)?;
    if let Some(preamble) = &bounds.preamble {
        outside.write_all(preamble)?;
    }
    for s in [&inside, &outside] {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
    }
    let mut to_gateway = Pipe::new(&inside, &outside);
    let mut to_agent = Pipe::new(&outside, &inside);
    while !(to_gateway.done && to_agent.done) {
        let mut fds = [
            poll_fd(&inside, to_gateway.wants_read(), to_agent.wants_write()),
            poll_fd(&outside, to_agent.wants_read(), to_gateway.wants_write()),
        ];
        let timeout = i32::try_from(idle.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two initialised pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // A socket we are not reading or writing that reports an error or a full hang-up: its
        // side is gone (poll would report it at once, forever).
        if fds
            .iter()
            .any(|fd| fd.events == 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0)
        {
            return Ok(());
        }
        if n == 0 {
            let _ = inside.shutdown(Shutdown::Both);
            let _ = outside.shutdown(Shutdown::Both);
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("idle for {idle:?}; closed"),
            ));
        }
        to_gateway.step()?;
        to_agent.step()?;
    }
    Ok(())
}

fn poll_fd(s: &TcpStream, read: bool, write: bool) -> libc::pollfd {
    use std::os::fd::AsRawFd;
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd: s.as_fd().as_raw_fd(),
        events,
        revents: 0,
    }
}

fn readable_within(s: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let mut fd = poll_fd(s, true, false);
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one initialised pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One direction: bytes read from `from`, not yet written to `to`.
struct Pipe<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
}

impl<'a> Pipe<'a> {
    fn new(from: &'a TcpStream, to: &'a TcpStream) -> Self {
        Pipe {
            from,
            to,
            buf: vec![0; BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && self.start == self.end
    }

    fn wants_write(&self) -> bool {
        self.start < self.end
    }

    /// Move what can move without blocking; at EOF with nothing pending, pass the half-close on.
    fn step(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        if self.wants_read() {
            match (&*self.from).read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => (self.start, self.end) = (0, n),
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.eof = true,
                Err(e) => return Err(e),
            }
        }
        while self.wants_write() {
            match (&*self.to).write(&self.buf[self.start..self.end]) {
                Ok(n) => self.start += n,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.eof && !self.wants_write() {
            let _ = self.to.shutdown(Shutdown::Write);
            self.done = true;
        }
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

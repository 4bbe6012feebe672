//! Mediated egress: the runner's side of the sandbox's one way out.
//!
//! The sandbox's init listens on a port of the sandbox's own loopback and hands the listening
//! socket to the runner ([`crate::sandbox`]). Every connection the agent makes to it is accepted
//! here, in the host's network namespace, and spliced to the gateway. The agent reaches the
//! gateway and nothing else; the gateway decides every call it makes.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::thread;

/// Accept the sandbox's connections on `listener` and forward each to `upstream`, on threads of
/// their own, until the runner exits.
pub fn forward(listener: OwnedFd, upstream: SocketAddr) {
    let listener = TcpListener::from(listener);
    thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(inside) => {
                    thread::spawn(move || {
                        if let Err(e) = splice(inside, upstream) {
                            eprintln!("egress: connection to the gateway {upstream}: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("egress: accepting a sandbox connection: {e}");
                    return;
                }
            }
        }
    });
}

/// Copy bytes both ways until each side has closed its half.
fn splice(inside: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let outside = TcpStream::connect(upstream)?;
    for s in [&inside, &outside] {
        s.set_nodelay(true)?;
    }
    let (mut in_read, mut out_write) = (inside.try_clone()?, outside.try_clone()?);
    let to_gateway = thread::spawn(move || {
        let copied = io::copy(&mut in_read, &mut out_write);
        let _ = out_write.shutdown(Shutdown::Write);
        copied
    });
    let (mut out_read, mut in_write) = (outside, inside);
    let copied = io::copy(&mut out_read, &mut in_write);
    let _ = in_write.shutdown(Shutdown::Write);
    let _ = to_gateway.join();
    copied.map(drop)
}

//! What the kernel knows of a TCP connection that the hub cannot see from its own reads
//! and writes: how many of the bytes it wrote the peer's TCP has acknowledged
//! (`TCP_INFO`'s `tcpi_bytes_acked`, Linux 4.2 and later).
//!
//! The sessions use it for liveness: a dashboard sends nothing but pongs, and a slow one
//! (`overflow=latest` on a weak link) reads our ping only after the backlog in front of
//! it, which can take longer than the ping timeout. Its TCP acknowledging new bytes says
//! that it is there and reading; a half-open peer acknowledges nothing.

use std::os::fd::RawFd;

/// The bytes the peer has acknowledged on the socket `fd` so far; `None` if the kernel
/// does not say (another OS, an old kernel, or `fd` is no socket).
///
/// `fd` must be the caller's own open socket for the whole call (the sessions pass their
/// connection's, which they hold open); with any other value the call fails cleanly.
pub(crate) fn bytes_acked(fd: RawFd) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: both pointers are to live locals of the sizes given; the kernel writes
        // at most `len` bytes and says how many in `len`. A bad `fd` is EBADF/ENOTSOCK.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = fd;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn counts_what_the_peer_acknowledged() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = super::bytes_acked(server.as_raw_fd()).expect("Linux says");
        server.write_all(&[7u8; 10_000]).unwrap();
        let mut buf = vec![0u8; 10_000];
        client.read_exact(&mut buf).unwrap();
        // The data was read, so it was acknowledged (loopback ACKs arrive at once, but
        // give them a moment).
        let mut after = before;
        for _ in 0..100 {
            after = super::bytes_acked(server.as_raw_fd()).unwrap();
            if after >= before + 10_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(after >= before + 10_000, "{before} -> {after}");
        assert_eq!(super::bytes_acked(-1), None);
    }
}

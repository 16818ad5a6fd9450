//! Descriptors across processes: one message of bytes with up to
//! `MAX_FDS` descriptors attached (SCM_RIGHTS), over a `SOCK_SEQPACKET`
//! Unix socket pair, so that each message arrives whole, with its own
//! descriptors, and a peer that goes away is seen as the end of the stream.
//!
//! Blocking calls, made on a thread of their own (never on a shard). A
//! received descriptor is owned at once (`OwnedFd`, close-on-exec), so none
//! leaks when a message is refused.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Largest message: well under the socket's default send buffer, so one
/// send never waits for half a message to drain.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A connected pair of sequenced-packet Unix sockets (close-on-exec).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `data` (at most `MAX_MESSAGE` bytes) with `fds` (at most
/// `MAX_FDS`) as one message.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if data.len() > MAX_MESSAGE || fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message of {} bytes and {} descriptors", data.len(), fds.len()),
        ));
    }
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "a message sent in part"));
    }
    Ok(())
}

/// Receives one message into `buf` (which must hold `MAX_MESSAGE` bytes):
/// its length and the descriptors it carried; `None` once the peer is gone.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in our
            // table for us; nothing else owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message or its descriptors cut short",
        ));
    }
    if msg.bytes == 0 {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn a_connected_socket_moves_with_its_unread_bytes_and_keeps_working() {
        let (a, b) = pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"sent before the move").unwrap();
        send(a.as_fd(), b"conn 1", &[server.as_raw_fd()]).unwrap();
        drop(server); // the sender lets go: the socket lives on in the message
        let mut buf = vec![0; MAX_MESSAGE];
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"conn 1");
        assert_eq!(fds.len(), 1);
        let mut moved = TcpStream::from(fds.into_iter().next().unwrap());
        let mut got = [0u8; 20];
        moved.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"sent before the move");
        moved.write_all(b"answered after").unwrap();
        let mut back = [0u8; 14];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"answered after");
    }

    #[test]
    fn each_message_arrives_whole_with_its_own_descriptors_and_the_end_is_seen() {
        let (a, b) = pair().unwrap();
        let files: Vec<std::fs::File> = (0..MAX_FDS)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send(a.as_fd(), &[7u8; MAX_MESSAGE], &raw).unwrap();
        send(a.as_fd(), b"none", &[]).unwrap();
        assert!(send(a.as_fd(), b"too many", &[raw[0]; MAX_FDS + 1]).is_err());
        drop(a);
        let mut buf = vec![0; MAX_MESSAGE];
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!((n, fds.len()), (MAX_MESSAGE, MAX_FDS));
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
        assert!(recv(b.as_fd(), &mut buf).unwrap().is_none(), "the peer is gone");
    }
}

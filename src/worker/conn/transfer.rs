//! The four byte transfers of a connection, and how their I/O results are read.
//!
//! Every phase of [`Connection`] moves bytes the same four ways: client to
//! `client_in`, `client_in` (after the rewritten head) to the backend, backend to
//! `backend_in`, and `backend_in` (after the response head) to the client. Each
//! transfer is one system call at most, runs only while its source has bytes and its
//! destination has room (that is the backpressure), and classifies newly read bytes
//! with the message's [`BodyFraming`](crate::http::BodyFraming) so that a body's end
//! is known the moment it arrives.
//!
//! On a reused backend connection the bytes sent are kept (`retain`) until the first
//! byte of the answer arrives: if the connection turns out to be stale, [`Connection::rewind`]
//! makes them unsent again for a fresh connection.

use std::io::{self, IoSlice, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::{Connection, Fault, Half, Phase, Upstream};

impl Connection {
    /// Reads client bytes into `client_in` if there is room; true if anything happened.
    pub(super) fn read_client(&mut self) -> Result<bool, Fault> {
        if !self.ready.readable || self.client_eof {
            return Ok(false);
        }
        let space = self.client_in.space();
        let room = space.len();
        if space.is_empty() {
            return Ok(false);
        }
        match classify(self.client.read(space)) {
            Io::Progress(n) => {
                self.ready.after_read(n, room);
                self.client_in.fill(n);
                self.observe_upload()?;
                Ok(true)
            }
            Io::WouldBlock => {
                self.ready.readable = false;
                Ok(false)
            }
            Io::Closed => {
                self.client_eof = true;
                Ok(true)
            }
            Io::Failed => Err(Fault::ClientGone),
        }
    }

    /// Classifies newly read client bytes as request body (or not).
    pub(super) fn observe_upload(&mut self) -> Result<(), Fault> {
        if self.phase == Phase::Tunnel {
            // In a tunnel every byte is payload.
            self.ex.up_ready = self.client_in.len();
            return Ok(());
        }
        if self.ex.upload == Half::Done || self.ex.upload_framing.is_done() {
            return Ok(());
        }
        let unobserved = &self.client_in.data()[self.ex.up_ready..];
        let progress = self
            .ex
            .upload_framing
            .observe(unobserved)
            .map_err(|_| Fault::BadRequestBody("malformed chunked encoding"))?;
        self.ex.up_ready += progress.body_bytes;
        Ok(())
    }

    /// Sends the request head and body bytes to the backend.
    pub(super) fn write_backend(&mut self, up: &mut Upstream) -> Result<bool, Fault> {
        if !up.ready.writable || !up.connected || up.write_shut {
            return Ok(false);
        }
        let head_end = if self.head_to_backend {
            self.head_out.len()
        } else {
            0
        };
        let head_from = self.ex.head_sent.min(head_end);
        let body_from = self.ex.up_sent;
        let body_end = self.ex.up_ready;
        let head_len = head_end - head_from;
        if head_len + body_end - body_from == 0 {
            self.note_upload_progress();
            return Ok(false);
        }
        let head = &self.head_out.data()[head_from..head_end];
        let body = &self.client_in.data()[body_from..body_end];
        match classify(write_two(&mut up.stream, head, body)) {
            Io::Progress(n) => {
                let from_head = n.min(head_len);
                let from_body = n - from_head;
                if self.ex.retain {
                    self.ex.head_sent += from_head;
                    self.ex.up_sent += from_body;
                } else {
                    self.head_out.consume(from_head);
                    self.client_in.consume(from_body);
                    self.ex.up_ready -= from_body;
                }
                self.note_upload_progress();
                Ok(true)
            }
            Io::WouldBlock => {
                up.ready.writable = false;
                Ok(false)
            }
            Io::Closed | Io::Failed if self.ex.download != Half::Head => {
                // The backend answered and stopped reading: the rest of the body is
                // not needed, but the client connection cannot be reused.
                self.ex.keep_alive = false;
                up.write_shut = true;
                Ok(true)
            }
            Io::Closed | Io::Failed if self.ex.retain => Err(Fault::Stale),
            Io::Closed | Io::Failed => Err(Fault::BackendGone("reset while sending")),
        }
    }

    /// Advances the request half after bytes went to the backend.
    pub(super) fn note_upload_progress(&mut self) {
        let head_unsent = self.head_to_backend && self.ex.head_sent < self.head_out.len();
        if self.ex.upload == Half::Head && !head_unsent {
            self.ex.upload = Half::Body;
            if !self.ex.retain {
                self.head_to_backend = false;
            }
        }
        let body_sent = self.ex.up_sent == self.ex.up_ready;
        if self.ex.upload == Half::Body && body_sent && self.ex.upload_framing.is_done() {
            self.ex.upload = Half::Done;
            self.ex.sent_at = Some(Instant::now());
        }
        // A buffer full of sent-but-kept bytes could never take the rest of the body:
        // give up the chance to resend rather than stall.
        if self.ex.retain && body_sent && self.client_in.is_full() {
            self.commit_sent();
        }
    }

    /// Forgets the bytes kept for a resend: the backend has started answering.
    pub(super) fn commit_sent(&mut self) {
        if !self.ex.retain {
            return;
        }
        self.ex.retain = false;
        if self.head_to_backend {
            self.head_out.consume(self.ex.head_sent);
            if self.head_out.is_empty() {
                self.head_to_backend = false;
            }
        }
        self.client_in.consume(self.ex.up_sent);
        self.ex.up_ready -= self.ex.up_sent;
        self.ex.head_sent = 0;
        self.ex.up_sent = 0;
    }

    /// Makes everything sent on a stale connection unsent again, for a fresh one.
    pub(super) fn rewind(&mut self) {
        self.ex.retain = false;
        self.ex.head_sent = 0;
        self.ex.up_sent = 0;
        self.ex.upload = Half::Head;
        self.ex.download = Half::Head;
        self.ex.sent_at = None;
        self.head_to_backend = true;
        self.backend_in.clear();
    }

    /// Reads backend bytes into `backend_in` while the response is still coming.
    pub(super) fn read_backend(&mut self, up: &mut Upstream) -> Result<bool, Fault> {
        let wanted = self.phase == Phase::Tunnel || self.ex.download != Half::Done;
        if !up.ready.readable || up.eof || !wanted {
            return Ok(false);
        }
        let space = self.backend_in.space();
        let room = space.len();
        if space.is_empty() {
            return Ok(false);
        }
        match classify(up.stream.read(space)) {
            Io::Progress(0) => Ok(false),
            Io::Progress(n) => {
                up.ready.after_read(n, room);
                self.commit_sent();
                self.backend_in.fill(n);
                self.observe_download()?;
                Ok(true)
            }
            Io::WouldBlock => {
                up.ready.readable = false;
                Ok(false)
            }
            Io::Closed => {
                up.eof = true;
                Ok(true)
            }
            Io::Failed if self.ex.retain => Err(Fault::Stale),
            Io::Failed => Err(Fault::BackendGone("failed while reading")),
        }
    }

    /// Classifies newly read backend bytes as response body.
    pub(super) fn observe_download(&mut self) -> Result<(), Fault> {
        if self.phase == Phase::Tunnel {
            self.ex.down_ready = self.backend_in.len();
            return Ok(());
        }
        if self.ex.download != Half::Body {
            return Ok(());
        }
        let unobserved = &self.backend_in.data()[self.ex.down_ready..];
        let progress = self
            .ex
            .download_framing
            .observe(unobserved)
            .map_err(|_| Fault::BadResponse("malformed chunked body"))?;
        self.ex.down_ready += progress.body_bytes;
        if progress.done {
            self.ex.download = Half::Done;
        }
        Ok(())
    }

    /// Sends a head for the client (response head or our answer) and response body.
    pub(super) fn write_client(&mut self) -> Result<bool, Fault> {
        if !self.ready.writable {
            return Ok(false);
        }
        let head_len = if self.head_to_backend {
            0
        } else {
            self.head_out.len()
        };
        let body_len = self.ex.down_ready;
        if head_len + body_len == 0 {
            return Ok(false);
        }
        let head = &self.head_out.data()[..head_len];
        let body = &self.backend_in.data()[..body_len];
        match classify(write_two(&mut self.client, head, body)) {
            Io::Progress(n) => {
                let from_head = n.min(head_len);
                self.head_out.consume(from_head);
                self.backend_in.consume(n - from_head);
                self.ex.down_ready -= n - from_head;
                self.ex.response_started = true;
                Ok(true)
            }
            Io::WouldBlock => {
                self.ready.writable = false;
                Ok(false)
            }
            Io::Closed | Io::Failed => Err(Fault::ClientGone),
        }
    }
}

/// The outcome of one read or write, classified once (sozu's `SocketResult`).
pub(super) enum Io {
    Progress(usize),
    WouldBlock,
    /// The peer closed or reset the connection.
    Closed,
    /// Any other error: the connection is unusable.
    Failed,
}

pub(super) fn classify(result: io::Result<usize>) -> Io {
    match result {
        Ok(0) => Io::Closed,
        Ok(n) => Io::Progress(n),
        Err(error) => match error.kind() {
            io::ErrorKind::WouldBlock => Io::WouldBlock,
            // A signal interrupted the call: nothing happened, try again later.
            io::ErrorKind::Interrupted => Io::Progress(0),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Io::Closed,
            _ => Io::Failed,
        },
    }
}

/// Writes a head and body in one system call.
fn write_two(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<usize> {
    if head.is_empty() {
        stream.write(body)
    } else if body.is_empty() {
        stream.write(head)
    } else {
        stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
    }
}

pub(super) enum ConnectResult {
    Pending,
    Connected,
    Failed(io::Error),
}

/// Whether a non-blocking connect has finished (the method mio's docs prescribe:
/// `take_error` for a failure, then `peer_addr` for completion).
pub(super) fn connect_result(stream: &TcpStream) -> ConnectResult {
    match stream.take_error() {
        Ok(Some(error)) | Err(error) => return ConnectResult::Failed(error),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => ConnectResult::Connected,
        Err(error) if error.kind() == io::ErrorKind::NotConnected => ConnectResult::Pending,
        Err(error) => ConnectResult::Failed(error),
    }
}

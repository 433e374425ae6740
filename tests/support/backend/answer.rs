//! The answers a [`TestBackend`](super::TestBackend) picks by request target, and the
//! helpers that write them.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::fill_pattern;
use super::super::wire::is_closed_error;
use super::{hold, Head, Next, Shared};

/// Answers `head` by its target (see the table on [`Behaviour`](super::Behaviour)).
/// `keep` is what the request's own framing allows for the connection.
pub(super) fn by_target(
    shared: &Shared,
    head: &Head,
    body: &[u8],
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    keep: Next,
) -> io::Result<Next> {
    let path = head.target.split('?').next().unwrap_or("");
    let head_only = head.method == "HEAD";

    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().expect("backend: /status/NNN");
        match code {
            204 => write_simple(writer, 204, "No Content", &shared.name, &[], b"", true)?,
            304 => {
                // A 304 may carry the length of the representation it stands for.
                let extra = [("ETag", "\"v1\""), ("Content-Length", "5")];
                write_raw_head(writer, 304, "Not Modified", &shared.name, &extra)?;
            }
            _ => {
                let text = format!("{} status {code}", shared.name);
                write_simple(
                    writer,
                    code,
                    "Status",
                    &shared.name,
                    &[],
                    text.as_bytes(),
                    head_only,
                )?;
            }
        }
        return Ok(keep);
    }
    if path == "/chunked" {
        let sizes: Vec<usize> = head
            .target
            .split_once("sizes=")
            .map(|(_, s)| s)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("backend: chunk size"))
            .collect();
        write_raw_head(
            writer,
            200,
            "OK",
            &shared.name,
            &[("Transfer-Encoding", "chunked")],
        )?;
        let mut offset = 0u64;
        for size in sizes.into_iter().filter(|&s| s > 0) {
            let mut data = vec![0; size];
            fill_pattern(offset, &mut data);
            offset += size as u64;
            writer.write_all(format!("{size:x}\r\n").as_bytes())?;
            writer.write_all(&data)?;
            writer.write_all(b"\r\n")?;
        }
        writer.write_all(b"0\r\n\r\n")?;
        return Ok(keep);
    }
    if let Some(n) = path.strip_prefix("/close/") {
        let n: u64 = n.parse().expect("backend: /close/N");
        write_raw_head(writer, 200, "OK", &shared.name, &[("Connection", "close")])?;
        write_pattern(shared, writer, n)?;
        writer.flush()?;
        return Ok(Next::Close);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: u64 = n.parse().expect("backend: /big/N");
        let len = n.to_string();
        write_raw_head(writer, 200, "OK", &shared.name, &[("Content-Length", &len)])?;
        if !head_only {
            write_pattern(shared, writer, n)?;
        }
        return Ok(keep);
    }
    if let Some(n) = path.strip_prefix("/half/") {
        let n: u64 = n.parse().expect("backend: /half/N");
        let len = n.to_string();
        write_raw_head(writer, 200, "OK", &shared.name, &[("Content-Length", &len)])?;
        write_pattern_range(shared, writer, 0, n / 2)?;
        if !wait_for_bytes(shared, reader)? {
            return Ok(Next::PeerClosed);
        }
        // More bytes came on a connection whose answer is unfinished: a proxy reused it.
        write_pattern_range(shared, writer, n / 2, n)?;
        return Ok(keep);
    }
    if path == "/conn-close" || path == "/http10" {
        // The connection stays open after these, so that only the proxy's reading of
        // the answer can stop it from sending another request on it.
        let text = format!("{} {} {}", shared.name, head.method, head.target);
        if path == "/conn-close" {
            let extra = [("Connection", "close")];
            write_simple(
                writer,
                200,
                "OK",
                &shared.name,
                &extra,
                text.as_bytes(),
                head_only,
            )?;
        } else {
            let answer = format!(
                "HTTP/1.0 200 OK\r\nX-Backend: {}\r\nContent-Length: {}\r\n\r\n{text}",
                shared.name,
                text.len()
            );
            writer.write_all(answer.as_bytes())?;
        }
        return Ok(keep);
    }
    if let Some(n) = path.strip_prefix("/eof/") {
        let n: u64 = n.parse().expect("backend: /eof/N");
        write_raw_head(writer, 200, "OK", &shared.name, &[])?;
        write_pattern(shared, writer, n)?;
        writer.flush()?;
        return Ok(Next::Close);
    }
    if let Some(code) = path.strip_prefix("/nobody/") {
        let code: u16 = code.parse().expect("backend: /nobody/NNN");
        let extra = [("Content-Length", "7")];
        write_raw_head(writer, code, "No Body", &shared.name, &extra)?;
        return Ok(keep);
    }
    if path == "/echo" {
        write_simple(writer, 200, "OK", &shared.name, &[], body, head_only)?;
        return Ok(keep);
    }
    if path.starts_with("/hold") && !hold(shared, reader)? {
        return Ok(Next::PeerClosed);
    }
    if path == "/ws" && head.has_token("upgrade", "websocket") {
        write_raw_head(
            writer,
            101,
            "Switching Protocols",
            &shared.name,
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(Next::PeerClosed),
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            writer.write_all(&buf[..n])?;
        }
    }
    let text = format!("{} {} {}", shared.name, head.method, head.target);
    write_simple(
        writer,
        200,
        "OK",
        &shared.name,
        &[],
        text.as_bytes(),
        head_only,
    )?;
    Ok(keep)
}

pub(super) fn write_raw_head(
    writer: &mut TcpStream,
    status: u16,
    reason: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nX-Backend: {name}\r\n");
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())
}

/// A response with `Content-Length` (none for 204) and, unless `head_only`, its body.
pub(super) fn write_simple(
    writer: &mut TcpStream,
    status: u16,
    reason: &str,
    name: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let len = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if status != 204 {
        headers.push(("Content-Length", &len));
        headers.push(("Content-Type", "text/plain"));
    }
    write_raw_head(writer, status, reason, name, &headers)?;
    if !head_only && status != 204 {
        writer.write_all(body)?;
    }
    Ok(())
}

/// Waits until the peer sends a byte (true) or closes the connection (false).
fn wait_for_bytes(shared: &Shared, reader: &mut BufReader<TcpStream>) -> io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    let stream = reader.get_ref();
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    let result = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break Ok(false);
        }
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => break Ok(false),
            Ok(_) => break Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if is_closed_error(&e) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    stream.set_read_timeout(None)?;
    result
}

pub(super) fn write_pattern(shared: &Shared, writer: &mut TcpStream, len: u64) -> io::Result<()> {
    write_pattern_range(shared, writer, 0, len)
}

/// Pattern bytes `from..to`.
fn write_pattern_range(
    shared: &Shared,
    writer: &mut TcpStream,
    from: u64,
    to: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = from;
    while offset < to {
        let n = (to - offset).min(buf.len() as u64) as usize;
        fill_pattern(offset, &mut buf[..n]);
        writer.write_all(&buf[..n])?;
        shared
            .pattern_bytes_sent
            .fetch_add(n as u64, Ordering::SeqCst);
        offset += n as u64;
    }
    Ok(())
}

//! HTTP/1.1 wire reading shared by the test backend and the test client: lines,
//! header blocks and bodies (Content-Length or chunked), never trusting one read.

use std::io::{self, BufRead};

/// Reads one line ending in LF; `None` at a clean EOF before any byte.
pub fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Reads header lines up to the empty line.
pub fn read_headers(reader: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

pub fn read_exact_into(
    reader: &mut impl BufRead,
    len: u64,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut remaining = len;
    while remaining > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        let n = buf.len().min(remaining as usize);
        sink(&buf[..n]);
        reader.consume(n);
        remaining -= n as u64;
    }
    Ok(())
}

/// Decodes a chunked body (extensions ignored, trailers read and dropped).
pub fn read_chunked(reader: &mut impl BufRead, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    loop {
        let line = read_line(reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk size"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
        })?;
        if size == 0 {
            read_headers(reader)?; // trailers
            return Ok(());
        }
        read_exact_into(reader, size, sink)?;
        let crlf = read_line(reader)?;
        if crlf.as_deref() != Some("") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no CRLF after chunk",
            ));
        }
    }
}

pub fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

//! Fixed-size byte buffers and the per-worker free list they come from.
//!
//! A connection holds its buffers only while a request is in progress: an idle
//! keep-alive connection gives them back, so ten thousand idle clients cost almost
//! nothing. A buffer never grows: when it is full, the side filling it stops reading
//! until the other side drains it (backpressure), which is what bounds the proxy's
//! memory however large a body is.

/// A fixed-capacity window of bytes: `data()` is what was filled and not yet consumed.
#[derive(Debug, Default)]
pub struct Buffer {
    storage: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer with no storage (a `Box<[u8]>` of length 0 does not allocate).
    pub fn detached() -> Buffer {
        Buffer::default()
    }

    pub fn is_attached(&self) -> bool {
        !self.storage.is_empty()
    }

    /// The bytes filled and not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True when no more bytes fit, even after moving the data to the front.
    pub fn is_full(&self) -> bool {
        self.len() == self.storage.len()
    }

    /// Room to fill, at the end. Moves the data to the front first when the tail is
    /// exhausted, so a partly consumed buffer keeps accepting bytes.
    pub fn space(&mut self) -> &mut [u8] {
        if self.end == self.storage.len() && self.start > 0 {
            self.storage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.storage[self.end..]
    }

    /// Marks `n` bytes of [`Buffer::space`] as filled.
    pub fn fill(&mut self, n: usize) {
        self.end = (self.end + n).min(self.storage.len());
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Replaces the contents with `bytes`; false (and unchanged) if they do not fit.
    pub fn set(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.storage.len() {
            return false;
        }
        self.storage[..bytes.len()].copy_from_slice(bytes);
        self.start = 0;
        self.end = bytes.len();
        true
    }

    /// Empties the buffer (keeping its storage).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

/// The worker's free list of buffer storage, all of one size.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    free: Vec<Box<[u8]>>,
    max_free: usize,
}

impl BufferPool {
    /// A pool handing out buffers of `size` bytes, keeping at most `max_free` spare.
    pub fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            size,
            free: Vec::with_capacity(max_free),
            max_free,
        }
    }

    /// Gives `buffer` storage if it has none. Reuses freed storage when there is some.
    pub fn attach(&mut self, buffer: &mut Buffer) {
        if !buffer.is_attached() {
            buffer.storage = self
                .free
                .pop()
                .unwrap_or_else(|| vec![0; self.size].into_boxed_slice());
            buffer.clear();
        }
    }

    /// Takes `buffer`'s storage back (its contents are dropped).
    pub fn detach(&mut self, buffer: &mut Buffer) {
        let storage = std::mem::take(&mut buffer.storage);
        buffer.clear();
        if storage.len() == self.size && self.free.len() < self.max_free {
            self.free.push(storage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_consume_and_compact() {
        let mut pool = BufferPool::new(8, 4);
        let mut buf = Buffer::detached();
        assert!(buf.space().is_empty());
        pool.attach(&mut buf);
        buf.space()[..6].copy_from_slice(b"abcdef");
        buf.fill(6);
        buf.consume(4);
        assert_eq!(buf.data(), b"ef");
        assert_eq!(buf.space().len(), 2);
        buf.fill(2);
        // The tail is used up: space() moves "ef??" to the front.
        assert_eq!(buf.space().len(), 4);
        assert_eq!(&buf.data()[..2], b"ef");
        buf.consume(10);
        assert!(buf.is_empty());
    }

    #[test]
    fn detached_storage_is_reused() {
        let mut pool = BufferPool::new(16, 1);
        let mut buf = Buffer::detached();
        pool.attach(&mut buf);
        let ptr = buf.storage.as_ptr();
        pool.detach(&mut buf);
        assert!(!buf.is_attached());
        let mut again = Buffer::detached();
        pool.attach(&mut again);
        assert_eq!(again.storage.as_ptr(), ptr);
        assert!(again.is_empty());
    }
}

//! Fixed-size byte buffers and the per-worker free list they come from.
//!
//! A connection holds its buffers only while a request is in progress: an idle
//! keep-alive connection gives them back, so ten thousand idle clients cost almost
//! nothing. A buffer never grows: when it is full, the side filling it stops reading
//! until the other side drains it (backpressure), which is what bounds the proxy's
//! memory however large a body is.
//!
//! The free list makes the steady state allocation-free: a request takes its buffers
//! from it and gives them back. After a burst, though, a large free list (and the
//! allocator's own caches) would keep the burst's memory resident for good, so
//! [`BufferPool::trim`] shrinks the list to what recent load needed and returns the
//! freed memory to the operating system.

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

/// Spare buffers a worker keeps even when it has been idle for a while.
const MIN_SPARE: usize = 8;

/// Trimming frees memory back to the OS only when at least this many buffers went.
const RELEASE_AFTER: usize = 16;

/// The worker's free list of buffer storage, all of one size.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    free: Vec<Box<[u8]>>,
    max_free: usize,
    /// Buffers attached to connections now.
    in_use: usize,
    /// The most buffers in use at once since the last [`BufferPool::trim`].
    peak: usize,
}

impl BufferPool {
    /// A pool handing out buffers of `size` bytes, keeping at most `max_free` spare.
    pub fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            size,
            free: Vec::with_capacity(max_free),
            max_free,
            in_use: 0,
            peak: 0,
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
            self.in_use += 1;
            self.peak = self.peak.max(self.in_use);
        }
    }

    /// Takes `buffer`'s storage back (its contents are dropped).
    pub fn detach(&mut self, buffer: &mut Buffer) {
        if !buffer.is_attached() {
            return;
        }
        let storage = std::mem::take(&mut buffer.storage);
        buffer.clear();
        self.in_use -= 1;
        if storage.len() == self.size && self.free.len() < self.max_free {
            self.free.push(storage);
        }
    }

    /// Spare buffers on the free list.
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    /// True when [`BufferPool::trim`] may have something to free.
    pub fn has_excess(&self) -> bool {
        self.free.len() > MIN_SPARE
    }

    /// Frees the spare buffers recent load did not need: as many as were in use at
    /// the peak since the last call beyond those in use now are kept (all but
    /// `MIN_SPARE` once nothing is in use). Called periodically by the worker.
    pub fn trim(&mut self) {
        let wanted = if self.in_use == 0 {
            MIN_SPARE
        } else {
            (self.peak - self.in_use).max(MIN_SPARE)
        };
        self.peak = self.in_use;
        if self.free.len() <= wanted {
            return;
        }
        let freed = self.free.len() - wanted;
        self.free.truncate(wanted);
        if freed >= RELEASE_AFTER {
            return_memory_to_os();
        }
    }
}

/// Hands memory the allocator holds free back to the operating system.
///
/// glibc keeps freed blocks of this size in its per-thread arenas for reuse, so after
/// a burst of connections their buffers would stay resident forever. `malloc_trim`
/// releases the free pages of every arena. Elsewhere this does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_memory_to_os() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim has no preconditions: it only walks glibc's own free lists,
    // under glibc's own locks, and is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_memory_to_os() {}

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
    fn trim_keeps_what_recent_load_needed_and_frees_the_rest() {
        let mut pool = BufferPool::new(16, 64);
        let mut bufs: Vec<Buffer> = (0..40).map(|_| Buffer::detached()).collect();
        for buf in &mut bufs {
            pool.attach(buf);
        }
        for buf in &mut bufs[10..] {
            pool.detach(buf);
        }
        // 40 at the peak, 10 still in use: the 30 spare may be needed again.
        pool.trim();
        assert_eq!(pool.spare(), 30);
        // A quiet interval (the peak is now 10, all still in use): down to the floor.
        pool.trim();
        assert_eq!(pool.spare(), MIN_SPARE);
        for buf in &mut bufs[..10] {
            pool.detach(buf);
        }
        pool.trim();
        assert_eq!(
            pool.spare(),
            MIN_SPARE,
            "an idle worker keeps only the floor"
        );
        assert_eq!(pool.in_use, 0);
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

//! Object bytes as the HTTP client received them: a sequence of [`Bytes`]
//! chunks, never copied into one buffer. A prefetched part keeps the chunks
//! of its GET; a read takes zero-copy slices of them; the FUSE reply hands
//! them to the kernel as one vectored write. Before, every part was copied
//! whole into a fresh buffer of its own (a copy of every byte read, and the
//! page faults of a new 4 MiB allocation per part).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Chunks smaller than this are gathered into one buffer as they arrive (a
/// `file://` store streams 8 KiB chunks; a reply of a hundred tiny pieces
/// costs more than their copy).
const GATHER_BELOW: usize = 64 * 1024;
/// A body of at most this much is copied into one buffer of its exact size:
/// a chunk shares (and keeps alive) the HTTP client's whole read buffer, up
/// to a few hundred KiB, so a small object held ahead of its open would pin
/// several times its size. Larger bodies fill those buffers themselves.
const GATHER_WHOLE_UP_TO: usize = 1024 * 1024;
/// The most buffers a FUSE reply is written from (the kernel takes at most
/// `UIO_MAXIOV`, 1024, in one `writev`, the reply's header included).
pub const MAX_REPLY_SLICES: usize = 256;
/// The buffer small chunks are gathered into.
const GATHER_CAPACITY: usize = 256 * 1024;

/// Bytes in order, held as a sequence of chunks.
#[derive(Debug, Clone, Default)]
pub struct ChunkedBytes {
    chunks: Vec<Bytes>,
    len: usize,
}

impl ChunkedBytes {
    /// No bytes.
    pub fn new() -> Self {
        ChunkedBytes::default()
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks, in order (none empty).
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Appends `chunk` as it is.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// Bytes `range` of these, sharing their chunks (no copy). A range past
    /// the end is cut at the end; an inverted range is empty.
    pub fn slice(&self, range: Range<usize>) -> ChunkedBytes {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        let mut sliced = ChunkedBytes::new();
        let mut at = 0;
        for chunk in &self.chunks {
            let chunk_end = at + chunk.len();
            if chunk_end > start && at < end {
                let from = start.saturating_sub(at);
                let to = end.min(chunk_end) - at;
                sliced.push(chunk.slice(from..to));
            }
            if chunk_end >= end {
                break;
            }
            at = chunk_end;
        }
        sliced
    }

    /// `self` followed by `other`'s chunks.
    pub fn extend(&mut self, other: ChunkedBytes) {
        if self.chunks.is_empty() {
            // The common case (a read from one part): no second list.
            *self = other;
            return;
        }
        for chunk in other.chunks {
            self.push(chunk);
        }
    }

    /// These bytes in at most `max_chunks` chunks: themselves, or one copy
    /// when they are in more (a FUSE reply of [`MAX_REPLY_SLICES`]).
    pub fn within_chunks(self, max_chunks: usize) -> ChunkedBytes {
        if self.chunks.len() <= max_chunks {
            self
        } else {
            self.to_bytes().into()
        }
    }

    /// The bytes in one buffer: the chunk itself when there is one, a copy
    /// otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(self.len);
                for chunk in many {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }
    }
}

impl From<Bytes> for ChunkedBytes {
    fn from(bytes: Bytes) -> Self {
        let mut chunked = ChunkedBytes::new();
        chunked.push(bytes);
        chunked
    }
}

/// Equal bytes are equal however they are chunked.
impl PartialEq for ChunkedBytes {
    fn eq(&self, other: &ChunkedBytes) -> bool {
        self.len == other.len && *self == other.to_bytes()[..]
    }
}

impl Eq for ChunkedBytes {}

impl PartialEq<[u8]> for ChunkedBytes {
    fn eq(&self, other: &[u8]) -> bool {
        if other.len() != self.len {
            return false;
        }
        let mut at = 0;
        self.chunks.iter().all(|chunk| {
            let same = other[at..at + chunk.len()] == chunk[..];
            at += chunk.len();
            same
        })
    }
}

/// Collects a body's chunks as they arrive: in a body of more than
/// [`GATHER_WHOLE_UP_TO`] bytes large chunks are kept as they are and runs of
/// small ones are gathered into buffers of [`GATHER_CAPACITY`] (each run
/// takes only what it fills, the rest serves the next run); a shorter body
/// is gathered whole.
#[derive(Debug)]
pub struct ChunkCollector {
    collected: ChunkedBytes,
    gathering: BytesMut,
    /// Whether large chunks are kept as they are.
    keep_chunks: bool,
}

impl ChunkCollector {
    /// A collector for a body of `expected` bytes.
    pub fn new(expected: u64) -> Self {
        let keep_chunks = expected > GATHER_WHOLE_UP_TO as u64;
        let gathering = if keep_chunks {
            BytesMut::new()
        } else {
            BytesMut::with_capacity(expected as usize)
        };
        ChunkCollector {
            collected: ChunkedBytes::new(),
            gathering,
            keep_chunks,
        }
    }

    /// Bytes collected so far.
    pub fn len(&self) -> usize {
        self.collected.len() + self.gathering.len()
    }

    /// Whether nothing was collected yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next chunk of the body.
    pub fn push(&mut self, chunk: Bytes) {
        if !self.keep_chunks {
            self.gathering.extend_from_slice(&chunk);
            return;
        }
        if chunk.len() >= GATHER_BELOW {
            self.flush();
            self.collected.push(chunk);
            return;
        }
        if self.gathering.capacity() - self.gathering.len() < chunk.len() {
            // The run so far, then a new buffer (the old one stays with the
            // runs it holds).
            self.flush();
            self.gathering = BytesMut::with_capacity(GATHER_CAPACITY);
        }
        self.gathering.extend_from_slice(&chunk);
    }

    /// Everything collected, in order.
    pub fn finish(mut self) -> ChunkedBytes {
        self.flush();
        self.collected
    }

    fn flush(&mut self) {
        if !self.gathering.is_empty() {
            // The run only: the buffer's free rest takes the next one.
            let gathered = self.gathering.split().freeze();
            self.collected.push(gathered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_chunks() -> ChunkedBytes {
        let mut chunked = ChunkedBytes::new();
        chunked.push(Bytes::from_static(b"abc"));
        chunked.push(Bytes::new());
        chunked.push(Bytes::from_static(b"defg"));
        chunked.push(Bytes::from_static(b"hi"));
        chunked
    }

    #[test]
    fn slices_share_the_chunks_and_keep_the_order() {
        let chunked = three_chunks();
        assert_eq!(chunked.len(), 9);
        assert_eq!(chunked.chunks().len(), 3, "empty chunks are not kept");
        assert!(chunked == b"abcdefghi"[..]);
        for start in 0..=9 {
            for end in start..=11 {
                let sliced = chunked.slice(start..end);
                assert!(
                    sliced == b"abcdefghi"[start..end.min(9)],
                    "{start}..{end}: {sliced:?}"
                );
                assert!(sliced.chunks().iter().all(|c| !c.is_empty()));
            }
        }
        // A slice inside one chunk is one chunk, and to_bytes does not copy it.
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = chunked.slice(5..3);
        assert!(inverted.is_empty());
        let inside = chunked.slice(4..6);
        assert_eq!(inside.chunks().len(), 1);
        assert_eq!(inside.to_bytes().as_ptr(), inside.chunks()[0].as_ptr());
        assert_eq!(&chunked.to_bytes()[..], b"abcdefghi");
        assert!(chunked != b"abcdefghX"[..]);
        assert_eq!(
            chunked,
            ChunkedBytes::from(Bytes::from_static(b"abcdefghi"))
        );
        assert!(chunked != b"abcdefgh"[..]);
    }

    #[test]
    fn small_chunks_are_gathered_and_large_ones_kept_as_they_are() {
        let mut collector = ChunkCollector::new(2 * 1024 * 1024);
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let chunk = Bytes::from(vec![i; 8 * 1024]);
            expected.extend_from_slice(&chunk);
            collector.push(chunk);
        }
        let large = Bytes::from(vec![200u8; GATHER_BELOW]);
        let large_ptr = large.as_ptr();
        expected.extend_from_slice(&large);
        collector.push(large);
        collector.push(Bytes::from_static(b"tail"));
        expected.extend_from_slice(b"tail");
        assert_eq!(collector.len(), expected.len());
        let collected = collector.finish();
        assert!(collected == expected[..]);
        // 800 KiB of 8 KiB chunks in 256 KiB buffers, the large chunk, the tail.
        assert_eq!(collected.chunks().len(), 4 + 1 + 1);
        assert_eq!(collected.chunks()[4].as_ptr(), large_ptr, "not copied");
    }

    #[test]
    fn runs_of_small_chunks_between_large_ones_share_gather_buffers() {
        // 64 KiB and 1 byte alternating: each 1-byte run is flushed alone,
        // but into the same 256 KiB buffer, not a new one per run.
        let mut collector = ChunkCollector::new(8 * 1024 * 1024);
        let mut expected = Vec::new();
        for i in 0..64u8 {
            let large = Bytes::from(vec![i; GATHER_BELOW]);
            expected.extend_from_slice(&large);
            collector.push(large);
            collector.push(Bytes::from(vec![i; 1]));
            expected.push(i);
        }
        let collected = collector.finish();
        assert!(collected == expected[..]);
        let runs: Vec<&Bytes> = collected.chunks().iter().filter(|c| c.len() == 1).collect();
        assert_eq!(runs.len(), 64);
        let first = runs[0].as_ptr() as usize;
        assert!(
            runs.iter()
                .all(|r| (r.as_ptr() as usize).abs_diff(first) < GATHER_CAPACITY),
            "every run is in the first gather buffer"
        );
    }

    #[test]
    fn every_byte_comes_out_in_order_whatever_the_chunk_sizes() {
        // Sizes around the thresholds, in a fixed pseudo-random order.
        let sizes = [
            1,
            GATHER_BELOW - 1,
            GATHER_BELOW,
            100 * 1024,
            150 * 1024,
            10 * 1024,
            GATHER_CAPACITY,
            7,
            200 * 1024,
            60 * 1024,
            300 * 1024,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut collector = ChunkCollector::new(64 * 1024 * 1024);
        let mut expected = Vec::new();
        for i in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let size = sizes[(seed % sizes.len() as u64) as usize];
            let chunk: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            collector.push(Bytes::from(chunk));
            assert_eq!(collector.len(), expected.len());
        }
        let collected = collector.finish();
        assert_eq!(collected.len(), expected.len());
        assert!(collected == expected[..], "the bytes, in order");
    }

    #[test]
    fn a_reply_in_too_many_chunks_is_joined() {
        let mut many = ChunkedBytes::new();
        for i in 0..2000u32 {
            many.push(Bytes::from(i.to_le_bytes().to_vec()));
        }
        let bytes = many.to_bytes();
        let few = many.clone().within_chunks(MAX_REPLY_SLICES);
        assert_eq!(few.chunks().len(), 1);
        assert!(few == bytes[..]);
        let kept = three_chunks().within_chunks(MAX_REPLY_SLICES);
        assert_eq!(kept.chunks().len(), 3);
    }

    #[test]
    fn a_small_body_is_gathered_into_one_buffer_of_its_size() {
        let mut collector = ChunkCollector::new(100 * 1024);
        assert!(!collector.keep_chunks);
        assert!(!ChunkCollector::new(GATHER_WHOLE_UP_TO as u64).keep_chunks);
        collector.push(Bytes::from(vec![1u8; GATHER_BELOW]));
        collector.push(Bytes::from(vec![2u8; 100 * 1024 - GATHER_BELOW]));
        let collected = collector.finish();
        assert_eq!(collected.chunks().len(), 1);
        assert_eq!(collected.len(), 100 * 1024);
        assert_eq!(collected.chunks()[0][GATHER_BELOW], 2);
    }
}

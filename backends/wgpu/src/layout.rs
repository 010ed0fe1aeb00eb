//! Padding and chunking arithmetic, kept free of wgpu so it can be unit-tested anywhere.

/// wgpu's `COPY_BUFFER_ALIGNMENT`: buffer sizes, copy offsets and copy sizes are multiples of it.
pub const ALIGN: u64 = 4;

/// Default upload / read-back chunk: 16 MiB (on lavapipe 4-16 MiB chunks upload 10-20% faster
/// than 32-64 MiB ones, which stop fitting in cache; on discrete GPUs a 16 MiB copy takes long
/// enough to hide the per-submit cost).
pub const DEFAULT_CHUNK: u64 = 16 << 20;

/// Smallest chunk accepted (anything smaller is raised to this).
pub const MIN_CHUNK: u64 = 4 << 10;

/// Size of the device buffer that holds `nbytes` logical bytes: rounded up to [`ALIGN`], and at
/// least [`ALIGN`] so an empty storage still has a bindable buffer. `None` on overflow.
pub fn padded_size(nbytes: u64) -> Option<u64> {
    if nbytes == 0 {
        return Some(ALIGN);
    }
    nbytes.checked_add(ALIGN - 1).map(|n| n & !(ALIGN - 1))
}

/// A usable chunk size: at least [`MIN_CHUNK`] and a multiple of 8 (wgpu's `MAP_ALIGNMENT`,
/// itself a multiple of [`ALIGN`]), so every chunk but the last starts and ends aligned.
pub fn normalize_chunk(chunk: u64) -> u64 {
    chunk.max(MIN_CHUNK) & !7
}

/// Splits `0..len` into consecutive `(offset, length)` pieces of at most `chunk` bytes.
/// `chunk` must be non-zero (use [`normalize_chunk`]); `len == 0` yields nothing.
pub fn chunks(len: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1);
    let mut offset = 0u64;
    std::iter::from_fn(move || {
        if offset >= len {
            return None;
        }
        let n = chunk.min(len - offset);
        let item = (offset, n);
        offset += n;
        Some(item)
    })
}

/// How one piece of host bytes is written: the aligned prefix goes as is, and the last
/// `len % 4` bytes (if any) go as one zero-padded word at `aligned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Length of the prefix whose size is a multiple of [`ALIGN`].
    pub aligned: usize,
    /// The zero-padded last word and its offset within the piece, when `len % 4 != 0`.
    pub tail: Option<(usize, [u8; 4])>,
}

/// Splits a piece into its aligned prefix and zero-padded tail word.
pub fn split_tail(piece: &[u8]) -> Split {
    let aligned = piece.len() & !(ALIGN as usize - 1);
    let rest = &piece[aligned..];
    let tail = if rest.is_empty() {
        None
    } else {
        let mut word = [0u8; 4];
        word[..rest.len()].copy_from_slice(rest);
        Some((aligned, word))
    };
    Split { aligned, tail }
}

/// Checks a storage of `nbytes` (padded to `padded`) against the device's `max_buffer_size`.
pub fn check_limit(nbytes: u64, padded: u64, max_buffer_size: u64) -> Result<(), String> {
    if padded > max_buffer_size {
        Err(format!(
            "the storage needs a {padded}-byte buffer ({nbytes} bytes padded to {ALIGN}), over the \
             adapter's max_buffer_size limit of {max_buffer_size} bytes"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding() {
        assert_eq!(padded_size(0), Some(4));
        assert_eq!(padded_size(1), Some(4));
        assert_eq!(padded_size(3), Some(4));
        assert_eq!(padded_size(4), Some(4));
        assert_eq!(padded_size(5), Some(8));
        assert_eq!(padded_size((1 << 20) + 3), Some((1 << 20) + 4));
        assert_eq!(padded_size(u64::MAX - 3), Some(u64::MAX - 3));
        assert_eq!(padded_size(u64::MAX - 2), None);
        assert_eq!(padded_size(u64::MAX), None);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(normalize_chunk(0), MIN_CHUNK);
        assert_eq!(normalize_chunk(DEFAULT_CHUNK), DEFAULT_CHUNK);
        assert_eq!(normalize_chunk(MIN_CHUNK + 5), MIN_CHUNK);
        assert_eq!(normalize_chunk((1 << 20) + 12), (1 << 20) + 8);
    }

    #[test]
    fn chunking() {
        assert_eq!(chunks(0, 8).count(), 0);
        assert_eq!(chunks(3, 8).collect::<Vec<_>>(), vec![(0, 3)]);
        assert_eq!(chunks(8, 8).collect::<Vec<_>>(), vec![(0, 8)]);
        assert_eq!(
            chunks(21, 8).collect::<Vec<_>>(),
            vec![(0, 8), (8, 8), (16, 5)]
        );
        // A 40 MiB + 3 storage in 16 MiB chunks: three pieces covering everything once.
        let len = (40 << 20) + 3;
        let pieces: Vec<_> = chunks(len, 16 << 20).collect();
        assert_eq!(
            pieces,
            vec![
                (0, 16 << 20),
                (16 << 20, 16 << 20),
                (32 << 20, (8 << 20) + 3)
            ]
        );
        let mut next = 0;
        for (off, n) in chunks(1_000_003, normalize_chunk(10_000)) {
            assert_eq!(off, next);
            assert!(n > 0 && n <= 10_000);
            assert_eq!(off % 8, 0);
            next = off + n;
        }
        assert_eq!(next, 1_000_003);
    }

    #[test]
    fn tails() {
        assert_eq!(
            split_tail(&[]),
            Split {
                aligned: 0,
                tail: None
            }
        );
        assert_eq!(
            split_tail(&[7]),
            Split {
                aligned: 0,
                tail: Some((0, [7, 0, 0, 0]))
            }
        );
        assert_eq!(
            split_tail(&[1, 2, 3, 4]),
            Split {
                aligned: 4,
                tail: None
            }
        );
        assert_eq!(
            split_tail(&[1, 2, 3, 4, 5, 6, 7]),
            Split {
                aligned: 4,
                tail: Some((4, [5, 6, 7, 0]))
            }
        );
    }

    #[test]
    fn limits() {
        assert!(check_limit(16, 16, 16).is_ok());
        let e = check_limit(17, 20, 16).unwrap_err();
        assert!(e.contains("max_buffer_size"), "{e}");
        assert!(e.contains("16 bytes"), "{e}");
    }
}

//! Hostile input for decoders: arbitrary bytes, valid encodings with a few
//! bytes flipped, cut, inserted or appended, and a global allocator that
//! counts per thread (bytes live, most live at once) so a test can bound
//! what one decode allocates while other tests run on other threads.
//!
//! Shared by the decoder tests of several crates (`#[path]`-included); a
//! binary that includes it gets its allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;

struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

thread_local! {
    // Const-initialised without a destructor: safe to touch from the allocator.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let _ = TOTAL.try_with(|total| total.set(total.get().saturating_add(bytes)));
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is passed to `System` unchanged; the counting touches
// only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        shrank(layout.size());
        grew(new_size);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What `f` allocated on this thread.
#[derive(Clone, Copy, Debug)]
pub struct Allocated {
    /// Most bytes live at once above what was live before the call.
    pub peak: usize,
    /// Bytes allocated in all, freed or not.
    #[allow(
        dead_code,
        reason = "read by some of the binaries that include this file"
    )]
    pub total: usize,
}

pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Allocated) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let total_before = TOTAL.with(Cell::get);
    let out = f();
    let allocated = Allocated {
        peak: PEAK.with(Cell::get) - before,
        total: TOTAL.with(Cell::get) - total_before,
    };
    (out, allocated)
}

/// Arbitrary bytes, mostly short: what a random peer sends.
pub fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

/// One change to an encoding.
#[derive(Clone, Debug)]
pub enum Edit {
    /// XOR a byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the encoding short.
    Truncate(Index),
    /// Insert bytes before a position.
    Insert(Index, Vec<u8>),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Remove up to 16 bytes from a position.
    Remove(Index, usize),
}

/// Bytes that break decoders more often than random ones do: huge length
/// prefixes and varints, numbers past every integer type, deep nesting,
/// invalid UTF-8, quotes and NULs.
fn splice() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        Just(vec![0xff; 10]),
        Just(vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]),
        Just(u32::MAX.to_be_bytes().to_vec()),
        Just((1u64 << 60).to_le_bytes().to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"1e400".to_vec()),
        Just(b"[".repeat(200)),
        Just(b"{\"a\":".repeat(100)),
        Just(vec![0xc3, 0x28, 0xed, 0xa0, 0x80]),
        Just(b"\"\\u0000\x00\n".to_vec()),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        2 => (any::<Index>(), splice()).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        1 => splice().prop_map(Edit::Extend),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, n)| Edit::Remove(at, n)),
    ]
}

/// One to four edits.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=4)
}

/// `valid` with `edits` applied in order.
pub fn edited(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for edit in edits {
        // Positions index the bytes as they are at that edit (one past the
        // end for insertions).
        match edit {
            Edit::Flip(at, mask) if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            Edit::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Edit::Insert(at, more) => {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, more.iter().copied());
            }
            Edit::Extend(more) => bytes.extend_from_slice(more),
            Edit::Remove(at, n) if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Flip(..) | Edit::Remove(..) => {}
        }
    }
    bytes
}

/// Fails the case unless decoding `input` peaked below `per_byte` bytes per
/// input byte plus `fixed`: a length prefix or count taken at its word
/// would allocate far more.
pub fn assert_bounded(
    what: &str,
    input: &[u8],
    allocated: Allocated,
    per_byte: usize,
    fixed: usize,
) {
    let bound = per_byte * input.len() + fixed;
    assert!(
        allocated.peak <= bound,
        "{what}: {} input bytes peaked at {} allocated bytes (bound {bound})",
        input.len(),
        allocated.peak
    );
}

//! A pool of freed host storage, reused for kernel outputs.
//!
//! When the store frees an owned buffer that nothing else references, its
//! `Vec` comes here instead of going back to the allocator; every kernel
//! (elementwise, fused, matmul, reduction, layout) takes its output
//! storage from here when a vector of its size class is kept. Size classes are per dtype, by capacity rounded up to a
//! power of two. The pool keeps at most [`Pool::limit`] bytes; storage
//! beyond that is dropped. Metering is untouched: the meter counts logical
//! buffers of a run, and pooled storage belongs to none.

use ndarray::{ArrayD, Dimension, IxDyn};
use rustc_hash::FxHashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tensorgraph_core::Value;

use crate::element::Element;

/// Bytes the pool keeps by default.
pub(crate) const DEFAULT_LIMIT: usize = 256 << 20;

/// Kept vectors of one element type, by size class.
#[derive(Debug)]
pub(crate) struct Shelf<T>(FxHashMap<u32, Vec<Vec<T>>>);

impl<T> Default for Shelf<T> {
    fn default() -> Self {
        Shelf(FxHashMap::default())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Shelves {
    f32: Shelf<f32>,
    i32: Shelf<i32>,
    /// Bytes (of capacity) kept on all shelves.
    bytes: usize,
}

/// An element type the pool keeps.
pub(crate) trait Pooled: Element {
    fn shelf(s: &mut Shelves) -> &mut Shelf<Self>;
}

impl Pooled for f32 {
    fn shelf(s: &mut Shelves) -> &mut Shelf<f32> {
        &mut s.f32
    }
}

impl Pooled for i32 {
    fn shelf(s: &mut Shelves) -> &mut Shelf<i32> {
        &mut s.i32
    }
}

/// The size class of `n` elements: `ceil(log2(n))`.
fn class(n: usize) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// The pool of one backend. Thread-safe.
#[derive(Debug)]
pub(crate) struct Pool {
    shelves: Mutex<Shelves>,
    limit: usize,
    hits: AtomicU64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new(DEFAULT_LIMIT)
    }
}

impl Pool {
    /// A pool keeping at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Pool {
            shelves: Mutex::new(Shelves::default()),
            limit,
            hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shelves> {
        // Each critical section leaves the shelves consistent.
        self.shelves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `value`'s storage, or drops it if the pool is full.
    pub(crate) fn put(&self, value: Value) {
        match value {
            Value::F32(a) => self.put_vec(a.into_raw_vec_and_offset().0),
            Value::I32(a) => self.put_vec(a.into_raw_vec_and_offset().0),
        }
    }

    /// Keeps `v` (its contents are irrelevant), or drops it if the pool
    /// would then hold more than its limit.
    pub(crate) fn put_vec<T: Pooled>(&self, v: Vec<T>) {
        let bytes = v.capacity() * size_of::<T>();
        if bytes == 0 {
            return;
        }
        let mut s = self.lock();
        if s.bytes + bytes > self.limit {
            drop(s);
            return;
        }
        s.bytes += bytes;
        T::shelf(&mut s)
            .0
            .entry(class(v.capacity()))
            .or_default()
            .push(v);
        // `v` was moved in under the lock; nothing large drops here.
    }

    /// A vector of exactly `n` elements from the pool, if one of `n`'s
    /// size class is kept; its contents are unspecified (but initialised).
    /// `what` names the value it is for, for the trace.
    pub(crate) fn take<T: Pooled>(&self, n: usize, what: &str) -> Option<Vec<T>> {
        if n == 0 {
            return None;
        }
        let mut v = {
            let mut s = self.lock();
            let list = T::shelf(&mut s).0.get_mut(&class(n))?;
            // Prefer storage that needs no reallocation.
            let at = list
                .iter()
                .position(|v| v.capacity() >= n)
                .unwrap_or(list.len() - 1);
            let v = list.swap_remove(at);
            if list.is_empty() {
                T::shelf(&mut s).0.remove(&class(n));
            }
            s.bytes -= v.capacity() * size_of::<T>();
            v
        };
        // Every element is overwritten by the kernel: shorten without
        // writing, and fill only a tail that must grow.
        let kept = v.capacity();
        if v.len() >= n {
            v.truncate(n);
        } else {
            v.resize(n, T::default());
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        // A vector of the class but smaller capacity moves to a new
        // allocation as it grows: the trace must not call that reuse.
        if kept >= n {
            tracing::debug!(target: "tensorgraph", "pool: reuse {n} x {} for {what}", T::DTYPE);
        } else {
            tracing::debug!(target: "tensorgraph", "pool: regrow {kept} to {n} x {} for {what} (reallocated)", T::DTYPE);
        }
        Some(v)
    }

    /// A vector of `n` elements: from the pool when one fits, else fresh.
    pub(crate) fn vec<T: Pooled>(pool: Option<&Pool>, n: usize, what: &str) -> Vec<T> {
        pool.and_then(|p| p.take(n, what)).unwrap_or_else(|| {
            let v = vec![T::default(); n];
            huge_pages(&v);
            v
        })
    }

    /// Vectors taken from the pool so far: kernel outputs, and the scratch
    /// some kernels use (a reduction's copy of a permuted operand, a
    /// prologue evaluated whole, a product the epilogue casts).
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Bytes kept now.
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The most bytes kept.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// Where a kernel's output storage comes from: a pool (when run by a
/// backend) and the name of the value, for the trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alloc<'a> {
    pub(crate) pool: Option<&'a Pool>,
    pub(crate) what: &'a str,
}

impl Alloc<'_> {
    /// Fresh storage every time.
    pub(crate) const NONE: Alloc<'static> = Alloc {
        pool: None,
        what: "",
    };

    /// A vector of `n` elements, pooled when possible. Its contents are
    /// unspecified: the kernel overwrites every element.
    pub(crate) fn vec<T: Pooled>(&self, n: usize) -> Vec<T> {
        Pool::vec(self.pool, n, self.what)
    }

    /// A row-major array of `dims` in storage from [`Alloc::vec`], to be
    /// overwritten whole.
    pub(crate) fn array<T: Pooled>(&self, dims: IxDyn) -> Result<ArrayD<T>, String> {
        let n = dims.size();
        ArrayD::from_shape_vec(dims, self.vec(n)).map_err(|e| e.to_string())
    }

    /// Gives a kernel's scratch storage (a copy it made of an operand,
    /// say) back to the pool, when there is one, for a later output.
    pub(crate) fn recycle(&self, value: Value) {
        if let Some(pool) = self.pool {
            pool.put(value);
        }
    }
}

/// Fresh vectors of at least this many bytes ask for transparent huge
/// pages. (glibc maps blocks over 32 MiB afresh each time; smaller ones
/// may come from its heap, already faulted in, where the advice costs a
/// system call and changes nothing.)
const HUGE_BYTES: usize = 4 << 20;

/// Asks Linux to back `v`'s whole 2 MiB pages with huge pages, before
/// anything touches them. A large fresh vector comes from `calloc` as
/// lazily zeroed pages, faulted in one 4 KiB page at a time by whichever
/// thread first writes it: 16,384 faults for a 64 MiB output, most of the
/// cost of a large kernel run with a fresh output. With huge pages it is
/// 32. Where transparent huge pages are off, or on other systems, nothing
/// changes.
pub(crate) fn huge_pages<T>(v: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = size_of_val(v);
        if bytes < HUGE_BYTES {
            return;
        }
        let start = v.as_ptr() as usize;
        let first = start.next_multiple_of(HUGE);
        let end = (start + bytes) / HUGE * HUGE;
        if end > first {
            // SAFETY: the range lies within `v`'s allocation; MADV_HUGEPAGE
            // only advises how to back it and never changes its contents.
            let rc = unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE)
            };
            if rc != 0 {
                tracing::trace!(target: "tensorgraph", "pool: madvise(MADV_HUGEPAGE) refused");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (v, HUGE_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class(1), 0);
        assert_eq!(class(2), 1);
        assert_eq!(class(3), 2);
        assert_eq!(class(1000), 10);
        assert_eq!(class(1024), 10);
        assert_eq!(class(1025), 11);
    }

    #[test]
    fn reuses_by_class_and_dtype() {
        let p = Pool::new(1 << 20);
        p.put_vec(vec![1.0f32; 1000]);
        assert_eq!(p.bytes(), 4000);
        assert!(p.take::<i32>(1000, "x").is_none());
        assert!(p.take::<f32>(2000, "x").is_none());
        let v = p.take::<f32>(600, "x").expect("same class");
        assert_eq!(v.len(), 600);
        assert_eq!(p.bytes(), 0);
        assert_eq!(p.hits(), 1);
        p.put_vec(v);
        let v = p.take::<f32>(1024, "x").expect("same class, grown");
        assert_eq!(v.len(), 1024);
    }

    #[test]
    fn respects_its_byte_bound() {
        let p = Pool::new(10_000);
        assert_eq!(p.limit(), 10_000);
        p.put_vec(vec![0f32; 1024]); // 4096 bytes
        p.put_vec(vec![0f32; 1024]); // 8192
        p.put_vec(vec![0f32; 1024]); // would be 12288: dropped
        assert_eq!(p.bytes(), 8192);
        p.put_vec(vec![0i32; 256]); // 9216
        assert_eq!(p.bytes(), 9216);
        assert!(p.bytes() <= p.limit());
    }

    /// A large fresh vector is writable, and where Linux lets this
    /// process have transparent huge pages (`always` or `madvise`, and not
    /// turned off for it), its advised part is eligible for them
    /// (`THPeligible: 1` in smaps; in `madvise` mode only the advice makes
    /// it so). Whether the kernel then finds free huge pages depends on
    /// fragmentation, so the test does not ask for them.
    #[test]
    fn large_fresh_vectors_ask_for_huge_pages() {
        let n = (48 << 20) / 4;
        let mut v: Vec<f32> = Pool::vec(None, n, "test");
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        #[cfg(target_os = "linux")]
        {
            let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .unwrap_or_default();
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let off_here = status
                .lines()
                .any(|l| l.starts_with("THP_enabled:") && l.ends_with('0'));
            if !(mode.contains("[always]") || mode.contains("[madvise]")) || off_here {
                eprintln!("transparent huge pages are off for this process: {mode}");
                return;
            }
            // madvise splits the mapping: look at the advised part.
            let inside = (v.as_ptr() as usize).next_multiple_of(2 << 20);
            let eligible = smaps_field(inside, "THPeligible:").expect("the mapping in smaps");
            assert_eq!(
                eligible, 1,
                "the advised 48 MiB are not eligible for huge pages"
            );
        }
    }

    /// A numeric field of the smaps entry of the mapping holding `addr`.
    #[cfg(target_os = "linux")]
    fn smaps_field(addr: usize, field: &str) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(value) = line.strip_prefix(field) {
                return value.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }
}

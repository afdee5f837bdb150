//! The backend's buffer table: ids to host values, metered.
//!
//! A buffer either owns a shared value or, for a plan input, borrows the
//! caller's feed for the duration of the run (see [`Held`]). The lock is
//! held only to insert, look up or remove an entry, never while a kernel
//! computes, so several runs share one store freely.

use rustc_hash::FxHashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tensorgraph_core::{BufferId, Env, Error, Meter, Result, Value, ValueId};

use crate::pool::Pool;

/// What a buffer holds.
#[derive(Debug)]
enum Data {
    /// A value of its own (shared with constants without copying).
    Owned(Arc<Value>),
    /// The run's feed for this input value; resolved through the run's
    /// [`Env`], which outlives the buffer's use within the run.
    Feed(ValueId),
    /// Lent to an in-place kernel writing its result into it (see
    /// [`Store::lend`]); nothing else reads the buffer meanwhile.
    Lent,
}

#[derive(Debug)]
struct Entry {
    data: Data,
    /// Bytes metered for it, returned on free.
    bytes: usize,
}

/// A buffer's value as a kernel reads it.
#[derive(Debug)]
pub(crate) enum Held<'a> {
    /// An owned buffer.
    Owned(Arc<Value>),
    /// A borrowed feed.
    Fed(&'a Value),
}

impl Deref for Held<'_> {
    type Target = Value;

    fn deref(&self) -> &Value {
        match self {
            Held::Owned(v) => v,
            Held::Fed(v) => v,
        }
    }
}

/// Live buffers by id.
#[derive(Debug, Default)]
pub(crate) struct Store {
    buffers: Mutex<FxHashMap<u64, Entry>>,
    next: AtomicU64,
    /// Storage of freed buffers, for reuse.
    pool: Pool,
}

fn missing(buffer: BufferId) -> Error {
    Error::Internal(format!(
        "cpu buffer {} does not exist (freed twice or never made)",
        buffer.0
    ))
}

fn lent(buffer: BufferId) -> Error {
    Error::Internal(format!(
        "cpu buffer {} is lent to an in-place kernel",
        buffer.0
    ))
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, FxHashMap<u64, Entry>> {
        // Every critical section is one map operation, so a panic
        // elsewhere cannot leave the map half-updated: poison is moot.
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, data: Data, bytes: usize, meter: &Meter) -> BufferId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        meter.alloc(bytes);
        self.lock().insert(id, Entry { data, bytes });
        BufferId(id)
    }

    /// Stores `value` as a new buffer, metering its bytes.
    pub(crate) fn insert(&self, value: Arc<Value>, meter: &Meter) -> BufferId {
        let bytes = value.bytes();
        self.add(Data::Owned(value), bytes, meter)
    }

    /// A buffer standing for the feed of input `v` in the current run.
    pub(crate) fn insert_feed(&self, v: ValueId, bytes: usize, meter: &Meter) -> BufferId {
        self.add(Data::Feed(v), bytes, meter)
    }

    /// The value in `buffer`, resolving feeds through `env`.
    pub(crate) fn get<'a>(&self, buffer: BufferId, env: &Env<'a>) -> Result<Held<'a>> {
        let feed = match &self
            .lock()
            .get(&buffer.0)
            .ok_or_else(|| missing(buffer))?
            .data
        {
            Data::Owned(v) => return Ok(Held::Owned(v.clone())),
            Data::Feed(v) => *v,
            Data::Lent => return Err(lent(buffer)),
        };
        Ok(Held::Fed(env.feed(feed)?))
    }

    /// The value in an owned buffer. Feed buffers are given their own copy
    /// before `execute` returns, so outside a run every buffer is owned.
    pub(crate) fn get_owned(&self, buffer: BufferId) -> Result<Arc<Value>> {
        match &self
            .lock()
            .get(&buffer.0)
            .ok_or_else(|| missing(buffer))?
            .data
        {
            Data::Owned(v) => Ok(v.clone()),
            Data::Feed(v) => Err(Error::Internal(format!(
                "cpu buffer {} still borrows the feed of {v} outside its run",
                buffer.0
            ))),
            Data::Lent => Err(lent(buffer)),
        }
    }

    /// Turns a feed buffer into an owned copy of the feed (no-op for an
    /// owned buffer). The copy is made outside the lock.
    pub(crate) fn own_feed(&self, buffer: BufferId, env: &Env<'_>) -> Result<()> {
        let v = match self.lock().get(&buffer.0).map(|e| &e.data) {
            Some(Data::Feed(v)) => *v,
            Some(Data::Owned(_) | Data::Lent) | None => return Ok(()),
        };
        let copy = Arc::new(env.feed(v)?.clone());
        if let Some(entry) = self.lock().get_mut(&buffer.0) {
            entry.data = Data::Owned(copy);
        }
        Ok(())
    }

    /// Drops `buffer`, metering its bytes as freed.
    pub(crate) fn remove(&self, buffer: BufferId, meter: &Meter) -> Result<()> {
        let entry = self
            .lock()
            .remove(&buffer.0)
            .ok_or_else(|| missing(buffer))?;
        meter.free(entry.bytes);
        // An unshared value's storage goes to the pool (or, when the pool
        // is full, drops here, after the lock is released).
        if let Data::Owned(v) = entry.data
            && let Ok(value) = Arc::try_unwrap(v)
        {
            self.pool.put(value);
        }
        Ok(())
    }

    /// Drops `buffer` like [`Store::remove`] and returns its value: the
    /// array itself when this was its only reference, else a copy (a
    /// constant shares its `Arc` with the graph). Outside a run no buffer
    /// borrows a feed (see [`Store::own_feed`]), so a feed here is an
    /// internal error; the buffer is released either way.
    pub(crate) fn take(&self, buffer: BufferId, meter: &Meter) -> Result<Value> {
        let entry = self
            .lock()
            .remove(&buffer.0)
            .ok_or_else(|| missing(buffer))?;
        meter.free(entry.bytes);
        match entry.data {
            Data::Owned(v) => Ok(Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone())),
            Data::Feed(v) => Err(Error::Internal(format!(
                "cpu buffer {} still borrows the feed of {v} outside its run",
                buffer.0
            ))),
            Data::Lent => Err(lent(buffer)),
        }
    }

    /// Takes the value out of an owned buffer for an in-place kernel to
    /// write into, leaving the entry (and its metered bytes) in place; the
    /// kernel gives a value back with [`Store::restore`]. Without other
    /// references the value comes back unshared, so it can be mutated.
    pub(crate) fn lend(&self, buffer: BufferId) -> Result<Arc<Value>> {
        let mut map = self.lock();
        let entry = map.get_mut(&buffer.0).ok_or_else(|| missing(buffer))?;
        match std::mem::replace(&mut entry.data, Data::Lent) {
            Data::Owned(v) => Ok(v),
            other => {
                entry.data = other;
                Err(Error::Internal(format!(
                    "cpu buffer {} is not an owned value; it cannot be written in place",
                    buffer.0
                )))
            }
        }
    }

    /// Puts `value` (of the lent value's type) back into a buffer taken
    /// by [`Store::lend`]. The buffer keeps its id and metered bytes.
    pub(crate) fn restore(&self, buffer: BufferId, value: Arc<Value>) -> Result<()> {
        let mut map = self.lock();
        let entry = map.get_mut(&buffer.0).ok_or_else(|| missing(buffer))?;
        entry.data = Data::Owned(value);
        Ok(())
    }

    /// The pool of freed storage.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Buffers alive now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

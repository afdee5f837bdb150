//! The backend's buffer table: ids to shared host values, metered.
//!
//! The lock is held only to insert, look up or remove an entry, never
//! while a kernel computes, so several runs share one store freely.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tensorgraph_core::{BufferId, Error, Meter, Result, Value};

/// Live buffers by id.
#[derive(Debug, Default)]
pub(crate) struct Store {
    buffers: Mutex<HashMap<u64, Arc<Value>>>,
    next: AtomicU64,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Value>>> {
        // A panic elsewhere cannot leave the map half-updated (every
        // critical section is one insert/get/remove), so poison is moot.
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` as a new buffer, metering its bytes.
    pub(crate) fn insert(&self, value: Arc<Value>, meter: &Meter) -> BufferId {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        meter.alloc(value.bytes());
        self.lock().insert(id, value);
        BufferId(id)
    }

    /// The value in `buffer`.
    pub(crate) fn get(&self, buffer: BufferId) -> Result<Arc<Value>> {
        self.lock()
            .get(&buffer.0)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("cpu buffer {} does not exist", buffer.0)))
    }

    /// Drops `buffer`, metering its bytes as freed.
    pub(crate) fn remove(&self, buffer: BufferId, meter: &Meter) -> Result<()> {
        let value = self.lock().remove(&buffer.0).ok_or_else(|| {
            Error::Internal(format!("cpu buffer {} freed twice or never made", buffer.0))
        })?;
        meter.free(value.bytes());
        // `value` drops here, after the lock is released.
        Ok(())
    }

    /// Buffers alive now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
